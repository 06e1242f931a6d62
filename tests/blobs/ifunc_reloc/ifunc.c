/*
 * An ifunc is resolved at load time by an R_X86_64_IRELATIVE relocation, which
 * a blob loader does not apply: blobgen must refuse it.
 */
static long add_one(long i)
{
	return i + 1;
}

static void *choose_add(void)
{
	return add_one;
}

long add(long i) __attribute__((ifunc("choose_add")));

long __export_compute(long i)
{
	return add(i);
}
