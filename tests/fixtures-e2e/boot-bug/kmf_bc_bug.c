// SPDX-License-Identifier: GPL-2.0
/* kmf_bc_bug: BUG() in init (bootcheck test): an Oops, insmod is killed, the kernel goes on. */
#include <linux/bug.h>
#include <linux/init.h>
#include <linux/module.h>

static int kmf_bc_bug_trigger = 1;
module_param_named(trigger, kmf_bc_bug_trigger, int, 0444);

static int __init kmf_bc_bug_init(void)
{
	pr_info("kmf_bc_bug: about to BUG()\n");
	if (kmf_bc_bug_trigger)
		BUG();
	return 0;
}

module_init(kmf_bc_bug_init);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
MODULE_DESCRIPTION("kmodforge bootcheck test: BUG() at init");
