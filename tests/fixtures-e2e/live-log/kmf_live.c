// SPDX-License-Identifier: GPL-2.0
/* kmf_live: built after ten seconds of ticks. */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_live_init(void)
{
	return 0;
}

static void __exit kmf_live_exit(void)
{
}

module_init(kmf_live_init);
module_exit(kmf_live_exit);
MODULE_LICENSE("GPL");
