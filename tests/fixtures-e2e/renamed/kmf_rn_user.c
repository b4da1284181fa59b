// SPDX-License-Identifier: GPL-2.0
/* kmf_rn_user: depends on kmf_rn_base (installed as kmf_rn_base-current.ko) through its symbol. */
#include <linux/init.h>
#include <linux/module.h>

int kmf_rn_base_answer(void);

static int __init kmf_rn_user_init(void)
{
	pr_info("kmf_rn_user: the answer is %d\n", kmf_rn_base_answer());
	return 0;
}

static void __exit kmf_rn_user_exit(void)
{
}

module_init(kmf_rn_user_init);
module_exit(kmf_rn_user_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodforge DEST_MODULE_NAME fixture: the dependent");
MODULE_VERSION("1.0");
