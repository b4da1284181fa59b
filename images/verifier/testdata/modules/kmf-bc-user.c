// SPDX-License-Identifier: GPL-2.0
/* kmf-bc-user (module kmf_bc_user): needs kmf_bc_base (bootcheck test of the load order). */
#include <linux/init.h>
#include <linux/module.h>

int kmf_bc_base_answer(void);

static int __init kmf_bc_user_init(void)
{
	pr_info("kmf_bc_user: kmf_bc_base answers %d\n", kmf_bc_base_answer());
	return 0;
}

static void __exit kmf_bc_user_exit(void)
{
}

module_init(kmf_bc_user_init);
module_exit(kmf_bc_user_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("2.1");
MODULE_DESCRIPTION("kmodforge bootcheck test: depends on kmf_bc_base");
