// SPDX-License-Identifier: GPL-2.0
/* kmf_rn_base: installed as kmf_rn_base-current.ko; exports a symbol kmf_rn_user calls. */
#include <linux/init.h>
#include <linux/module.h>

int kmf_rn_base_answer(void)
{
	return 42;
}
EXPORT_SYMBOL_GPL(kmf_rn_base_answer);

static int __init kmf_rn_base_init(void)
{
	pr_info("kmf_rn_base: loaded\n");
	return 0;
}

static void __exit kmf_rn_base_exit(void)
{
}

module_init(kmf_rn_base_init);
module_exit(kmf_rn_base_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodforge DEST_MODULE_NAME fixture: the renamed module");
MODULE_VERSION("1.0");
