/* A PIE plugin whose pre-sigreturn hook refuses the restore. */
#include <pie/plugin.h>

int criupy_hook_pre_sigreturn(const struct criupy_hook_args *args)
{
	return 7;
}
