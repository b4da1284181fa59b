// SPDX-License-Identifier: GPL-2.0
/* kmf_dir_a: PATCH[0] changes its version, PRE_BUILD writes the header, MAKE sets kmf_make. */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/stringify.h>
#include "kmf_generated.h"

static int __init kmf_dir_a_init(void)
{
	pr_info("kmf_dir_a: loaded\n");
	return 0;
}

static void __exit kmf_dir_a_exit(void)
{
	pr_info("kmf_dir_a: unloaded\n");
}

module_init(kmf_dir_a_init);
module_exit(kmf_dir_a_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0-unpatched");
MODULE_DESCRIPTION("kmodforge directives test module (unstripped)");
MODULE_INFO(kmf_make, __stringify(KMF_WHICH_MAKE));
MODULE_INFO(kmf_pre_arg, KMF_PRE_ARG);
MODULE_INFO(kmf_pre_saw_patch, KMF_PRE_SAW_PATCH);
MODULE_INFO(kmf_pre_cwd, KMF_PRE_CWD);
