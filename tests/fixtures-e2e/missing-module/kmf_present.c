// SPDX-License-Identifier: GPL-2.0
/* kmf_present: the only module make builds. */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_present_init(void)
{
	return 0;
}

static void __exit kmf_present_exit(void)
{
}

module_init(kmf_present_init);
module_exit(kmf_present_exit);
MODULE_LICENSE("GPL");
