// SPDX-License-Identifier: GPL-2.0
/* kmf_bc_enodev: init fails with -ENODEV (bootcheck test). */
#include <linux/errno.h>
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_bc_enodev_init(void)
{
	pr_err("kmf_bc_enodev: no such hardware, init returns -ENODEV\n");
	return -ENODEV;
}

module_init(kmf_bc_enodev_init);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
MODULE_DESCRIPTION("kmodforge bootcheck test: init returns -ENODEV");
