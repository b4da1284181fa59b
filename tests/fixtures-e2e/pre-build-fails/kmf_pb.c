// SPDX-License-Identifier: GPL-2.0
/* kmf_pb: PRE_BUILD exits 3, so make never runs */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_pb_init(void)
{
	return 0;
}

static void __exit kmf_pb_exit(void)
{
}

module_init(kmf_pb_init);
module_exit(kmf_pb_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
