// SPDX-License-Identifier: GPL-2.0
#include <linux/module.h>
#include "kmf_dep_base.h"

int kmf_dep_base_answer(void)
{
	return KMF_DEP_BASE_MAGIC;
}
EXPORT_SYMBOL_GPL(kmf_dep_base_answer);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kmodforge BUILD_DEPENDS fixture: the dependency");
MODULE_VERSION("1.0");
