/* The C side of kvc.h's contract, checked when the library is built: the
 * export layer (KVCFormatC) fills these structs field by field through the
 * same header, so only the assumptions below could drift unnoticed. */
#include "kvc.h"

_Static_assert(sizeof(kvc_status) == sizeof(int), "kvc_status is an int-sized enum");
_Static_assert(KVC_NAME_SIZE == 40 + 3 + 1, "a name is 40 hex digits, .kv and a NUL");
_Static_assert(sizeof(((kvc_error *)0)->message) == KVC_MESSAGE_SIZE, "kvc_error.message holds KVC_MESSAGE_SIZE bytes");
_Static_assert(sizeof(((kvc_verify_result *)0)->problems) / sizeof(kvc_problem) == KVC_MAX_PROBLEMS,
               "kvc_verify_result carries KVC_MAX_PROBLEMS problems");
_Static_assert(KVC_TOUCH_INCREMENT == UINT64_MAX, "touch's increment marker is all ones");
