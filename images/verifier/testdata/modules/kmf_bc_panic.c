// SPDX-License-Identifier: GPL-2.0
/* kmf_bc_panic: panic() in init (bootcheck test): panic=-1 + qemu -no-reboot must end the boot at once. */
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/panic.h>

static int __init kmf_bc_panic_init(void)
{
	panic("kmf_bc_panic: deliberate panic from module init");
	return 0;
}

module_init(kmf_bc_panic_init);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
MODULE_DESCRIPTION("kmodforge bootcheck test: panic() at init");
