// SPDX-License-Identifier: GPL-2.0
/* kmf_bc_ok: a module that loads (bootcheck test). */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_bc_ok_init(void)
{
	pr_info("kmf_bc_ok: hello from the guest\n");
	return 0;
}

static void __exit kmf_bc_ok_exit(void)
{
}

module_init(kmf_bc_ok_init);
module_exit(kmf_bc_ok_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
MODULE_DESCRIPTION("kmodforge bootcheck test: loads");
