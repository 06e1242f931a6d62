/* Calls a function that no source defines: blobgen must refuse to link this. */
long not_defined_anywhere(long i);

long __export_compute(long i)
{
	return not_defined_anywhere(i) + 1;
}
