// SPDX-License-Identifier: GPL-2.0
/* kmf_bc_base: exports a symbol that kmf-bc-user needs (bootcheck test of the load order). */
#include <linux/init.h>
#include <linux/module.h>

int kmf_bc_base_answer(void)
{
	return 42;
}
EXPORT_SYMBOL_GPL(kmf_bc_base_answer);

static int __init kmf_bc_base_init(void)
{
	pr_info("kmf_bc_base: ready\n");
	return 0;
}

static void __exit kmf_bc_base_exit(void)
{
}

module_init(kmf_bc_base_init);
module_exit(kmf_bc_base_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("2.1");
MODULE_DESCRIPTION("kmodforge bootcheck test: exports a symbol");
