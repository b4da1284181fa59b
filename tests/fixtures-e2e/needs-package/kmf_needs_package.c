// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodforge fixture: needs libxtables-dev at build time");
MODULE_VERSION("1.0");
