/*
 * sandbox.h: what the Lua sandboxes (policies, the config file) may not
 * keep from the standard libraries. The instruction budget is a count hook,
 * and a hook never runs inside one C call, so every library function that
 * can spin for long inside C is removed or bounded here; so is xpcall, whose
 * message handler runs with hooks off after the budget error. Depends on Lua.
 */
#ifndef DCM_SANDBOX_H
#define DCM_SANDBOX_H

#include <lua.h>

/* The longest string string.rep may build. */
#define DCM_SANDBOX_REP_MAX (1u << 20)

/*
 * Hardens the base table at base_idx and the string table at string_idx:
 * removes xpcall; replaces string.rep with a bounded one; removes the
 * pattern functions (match, gmatch, gsub) and makes string.find plain.
 */
void dcm__sandbox_harden(lua_State *L, int base_idx, int string_idx);

#endif
