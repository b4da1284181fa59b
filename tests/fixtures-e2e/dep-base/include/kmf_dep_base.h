/* The API of kmf_dep_base; kmf-dep-user includes it from /usr/src/kmf-dep-base-1.0. */
#ifndef KMF_DEP_BASE_H
#define KMF_DEP_BASE_H
#define KMF_DEP_BASE_MAGIC 42
int kmf_dep_base_answer(void);
#endif
