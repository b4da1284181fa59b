// SPDX-License-Identifier: GPL-2.0
/* kmf_twice: shipped as kmf_twice-a.ko and kmf_twice-b.ko. */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_twice_init(void)
{
	return 0;
}

static void __exit kmf_twice_exit(void)
{
}

module_init(kmf_twice_init);
module_exit(kmf_twice_exit);
MODULE_LICENSE("GPL");
