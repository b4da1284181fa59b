// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include <kmf_dep_base.h>

static int __init kmf_dep_user_init(void)
{
	pr_info("kmf_dep_user: the answer is %d\n", kmf_dep_base_answer());
	return 0;
}

static void __exit kmf_dep_user_exit(void)
{
}

module_init(kmf_dep_user_init);
module_exit(kmf_dep_user_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodforge BUILD_DEPENDS fixture: the dependent");
MODULE_VERSION("1.0");
