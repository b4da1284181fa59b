// SPDX-License-Identifier: GPL-2.0
/* kmf_pf: its only patch does not apply, so it is never built */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_pf_init(void)
{
	return 0;
}

static void __exit kmf_pf_exit(void)
{
}

module_init(kmf_pf_init);
module_exit(kmf_pf_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
