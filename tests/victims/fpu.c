/* Keeps distinctive values in registers across a dump: x87 st(0) and st(1) (80-bit long doubles, with a
 * non-default control word), xmm0-15 with the upper halves of ymm0-15 (AVX), and MXCSR. They are loaded,
 * then an asm loop spins without touching memory but a flag, until SIGUSR1's handler sets it; then the
 * registers are stored and compared with what was loaded. Prints "ready" before the loop and "OK" or
 * "mismatch: ..." after it. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile int stop;

static void on_usr1(int sig)
{
	(void)sig;
	stop = 1;
}

struct state {
	uint8_t ymm[16][32];
	long double st0, st1;
	uint16_t fpu_cw;
	uint32_t mxcsr;
} __attribute__((aligned(64)));

int main(void)
{
	static struct state in, out;
	signal(SIGUSR1, on_usr1);
	setvbuf(stdout, NULL, _IOLBF, 0);

	for (int r = 0; r < 16; r++)
		for (int b = 0; b < 32; b++)
			in.ymm[r][b] = (uint8_t)(0x11 * r + 7 * b + 1);
	in.st0 = 3.14159265358979323846264338327950288L / 7;
	in.st1 = -1.0L / 3;
	in.fpu_cw = 0x0F7F;   /* round toward zero, 64-bit precision, all exceptions masked */
	in.mxcsr = 0x7F80;    /* round toward zero (RC = 11), all exceptions masked */

	printf("ready\n");
	__asm__ volatile(
		"fldcw %[cw_in]\n\t"
		"ldmxcsr %[mxcsr_in]\n\t"
		"fldt %[st1_in]\n\t"
		"fldt %[st0_in]\n\t"
		"vmovdqu 0(%[in]), %%ymm0\n\t"   "vmovdqu 32(%[in]), %%ymm1\n\t"
		"vmovdqu 64(%[in]), %%ymm2\n\t"  "vmovdqu 96(%[in]), %%ymm3\n\t"
		"vmovdqu 128(%[in]), %%ymm4\n\t" "vmovdqu 160(%[in]), %%ymm5\n\t"
		"vmovdqu 192(%[in]), %%ymm6\n\t" "vmovdqu 224(%[in]), %%ymm7\n\t"
		"vmovdqu 256(%[in]), %%ymm8\n\t" "vmovdqu 288(%[in]), %%ymm9\n\t"
		"vmovdqu 320(%[in]), %%ymm10\n\t" "vmovdqu 352(%[in]), %%ymm11\n\t"
		"vmovdqu 384(%[in]), %%ymm12\n\t" "vmovdqu 416(%[in]), %%ymm13\n\t"
		"vmovdqu 448(%[in]), %%ymm14\n\t" "vmovdqu 480(%[in]), %%ymm15\n\t"
		"1: pause\n\t"
		"cmpl $0, %[stop]\n\t"
		"je 1b\n\t"
		"vmovdqu %%ymm0, 0(%[out])\n\t"   "vmovdqu %%ymm1, 32(%[out])\n\t"
		"vmovdqu %%ymm2, 64(%[out])\n\t"  "vmovdqu %%ymm3, 96(%[out])\n\t"
		"vmovdqu %%ymm4, 128(%[out])\n\t" "vmovdqu %%ymm5, 160(%[out])\n\t"
		"vmovdqu %%ymm6, 192(%[out])\n\t" "vmovdqu %%ymm7, 224(%[out])\n\t"
		"vmovdqu %%ymm8, 256(%[out])\n\t" "vmovdqu %%ymm9, 288(%[out])\n\t"
		"vmovdqu %%ymm10, 320(%[out])\n\t" "vmovdqu %%ymm11, 352(%[out])\n\t"
		"vmovdqu %%ymm12, 384(%[out])\n\t" "vmovdqu %%ymm13, 416(%[out])\n\t"
		"vmovdqu %%ymm14, 448(%[out])\n\t" "vmovdqu %%ymm15, 480(%[out])\n\t"
		"vzeroupper\n\t"
		"fstpt %[st0_out]\n\t"
		"fstpt %[st1_out]\n\t"
		"fnstcw %[cw_out]\n\t"
		"stmxcsr %[mxcsr_out]\n\t"
		"fninit\n\t"
		"movl $0x1f80, %[mxcsr_out_tmp]\n\t"
		"ldmxcsr %[mxcsr_out_tmp]\n\t"
		: [st0_out] "=m"(out.st0), [st1_out] "=m"(out.st1), [cw_out] "=m"(out.fpu_cw),
		  [mxcsr_out] "=m"(out.mxcsr), [mxcsr_out_tmp] "=m"(in.mxcsr)
		: [in] "r"(in.ymm), [out] "r"(out.ymm), [st0_in] "m"(in.st0), [st1_in] "m"(in.st1),
		  [cw_in] "m"(in.fpu_cw), [mxcsr_in] "m"(in.mxcsr), [stop] "m"(stop)
		: "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9",
		  "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
	in.mxcsr = 0x7F80;

	int bad = 0;
	for (int r = 0; r < 16; r++)
		for (int half = 0; half < 2; half++)
			if (memcmp(in.ymm[r] + 16 * half, out.ymm[r] + 16 * half, 16)) {
				printf("mismatch: %s%d\n", half ? "upper half of ymm" : "xmm", r);
				bad = 1;
			}
	if (memcmp(&in.st0, &out.st0, 10) || memcmp(&in.st1, &out.st1, 10)) {
		printf("mismatch: x87 st(0)/st(1)\n");
		bad = 1;
	}
	if (out.fpu_cw != in.fpu_cw) {
		printf("mismatch: x87 control word %#x\n", out.fpu_cw);
		bad = 1;
	}
	if (out.mxcsr != in.mxcsr) {
		printf("mismatch: mxcsr %#x\n", out.mxcsr);
		bad = 1;
	}
	if (!bad)
		printf("OK\n");
	return bad;
}
