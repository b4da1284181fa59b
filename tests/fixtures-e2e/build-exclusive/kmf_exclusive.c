// SPDX-License-Identifier: GPL-2.0
/* kmf_exclusive: never built on a 6.x kernel. */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_exclusive_init(void)
{
	return 0;
}

static void __exit kmf_exclusive_exit(void)
{
}

module_init(kmf_exclusive_init);
module_exit(kmf_exclusive_exit);
MODULE_LICENSE("GPL");
