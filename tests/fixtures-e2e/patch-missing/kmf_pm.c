// SPDX-License-Identifier: GPL-2.0
/* kmf_pm: PATCH[1] names a file that patches/ does not have */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_pm_init(void)
{
	return 0;
}

static void __exit kmf_pm_exit(void)
{
}

module_init(kmf_pm_init);
module_exit(kmf_pm_exit);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
