/* Offset 0 of the test blob: jump to the C export, as a real head would set things up first. */
	.section .head.text, "ax"
	.globl __export_head
__export_head:
	jmp __export_log_lines
