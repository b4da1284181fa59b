// SPDX-License-Identifier: GPL-2.0
/* kmf_bc_hang: init never returns (bootcheck test): the boot timeout must end the check. */
#include <linux/delay.h>
#include <linux/init.h>
#include <linux/module.h>

static int __init kmf_bc_hang_init(void)
{
	unsigned int n = 0;

	for (;;) {
		pr_info("kmf_bc_hang: still in init (%u s)\n", n);
		ssleep(2);
		n += 2;
	}
	return 0;
}

module_init(kmf_bc_hang_init);

MODULE_LICENSE("GPL");
MODULE_VERSION("1.0");
MODULE_DESCRIPTION("kmodforge bootcheck test: init hangs");
