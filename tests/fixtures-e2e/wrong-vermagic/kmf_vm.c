// SPDX-License-Identifier: GPL-2.0
/* kmf_vm: built normally; dkms.conf's MAKE then rewrites its vermagic. */
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_vm_init(void)
{
	return 0;
}

static void __exit kmf_vm_exit(void)
{
}

module_init(kmf_vm_init);
module_exit(kmf_vm_exit);
MODULE_LICENSE("GPL");
