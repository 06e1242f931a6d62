/* A PIE plugin that calls a function outside the pie library: blobgen must refuse it. */
#include <pie/plugin.h>

int not_in_the_pie_library(int pid);

int criupy_hook_pre_sigreturn(const struct criupy_hook_args *args)
{
	return not_in_the_pie_library(args->pid);
}
