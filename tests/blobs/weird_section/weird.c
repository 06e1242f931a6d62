/* Puts data in a section pie.lds does not place: blobgen must refuse it. */
static long marker __attribute__((section(".weird"), used)) = 42;

long __export_compute(long i)
{
	return marker + i;
}
