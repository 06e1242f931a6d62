/* The x86-64 rt_sigframe that rt_sigreturn takes the dumped registers, FPU state and mask from. */
#ifndef CRIUPY_RESTORER_SIGFRAME_H
#define CRIUPY_RESTORER_SIGFRAME_H

#include "restorer.h"

/*
 * Builds the frame in t->sigframe from t->regs, t->xsave, t->blocked and the dumped sigaltstack;
 * returns the stack pointer for rt_sigreturn (the address of the frame's ucontext).
 */
unsigned long build_sigframe(struct rst_thread *t);

#endif
