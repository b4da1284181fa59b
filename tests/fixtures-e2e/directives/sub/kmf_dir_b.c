// SPDX-License-Identifier: GPL-2.0
/* kmf_dir_b: built in sub/, shipped as kmf_dir_renamed.ko, stripped. */
#include <linux/init.h>
#include <linux/module.h>

/* PATCH[1] (only on 5.x kernels) would change this field. */
MODULE_INFO(kmf_patch1, "not-applied");

static int __init kmf_dir_b_init(void)
{
	pr_info("kmf_dir_b: loaded\n");
	return 0;
}

static void __exit kmf_dir_b_exit(void)
{
	pr_info("kmf_dir_b: unloaded\n");
}

module_init(kmf_dir_b_init);
module_exit(kmf_dir_b_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
MODULE_DESCRIPTION("kmodforge directives test module (stripped, renamed)");

/* PATCH[2] (6.1.0-* kernels) changes this field. */
MODULE_INFO(kmf_patch2, "not-applied");
