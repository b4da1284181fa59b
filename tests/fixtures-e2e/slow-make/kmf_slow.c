// SPDX-License-Identifier: GPL-2.0
/* kmf_slow: built after a 20 s sleep in MAKE. */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_slow_init(void)
{
	return 0;
}

static void __exit kmf_slow_exit(void)
{
}

module_init(kmf_slow_init);
module_exit(kmf_slow_exit);
MODULE_LICENSE("GPL");
