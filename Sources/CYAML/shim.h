#ifndef KVSCRUBD_CYAML_SHIM_H
#define KVSCRUBD_CYAML_SHIM_H
/* Debian's libyaml (libyaml-0-2): the config file's parser. Linked from the
 * system so the package carries no copy of it (lintian: embedded-library)
 * and Debian's security updates reach it. */
#include <yaml.h>
#endif
