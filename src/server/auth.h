/* auth.h — bearer tokens with roles (read < submit < admin).
 *
 * A token is shown once when made (`decompd token create`) and stored only
 * as its SHA-256. While no token exists the API is open (a fresh install on
 * loopback); once one exists, every route that asks for a role needs
 * `Authorization: Bearer <token>` whose role is at least that one. */
#ifndef DECOMPD_SERVER_AUTH_H
#define DECOMPD_SERVER_AUTH_H

#include <stddef.h>

#include "store.h"

/* DECOMP_OK when `authorization` (the header, may be NULL) grants `need`
 * (STORE_ROLE_*); else DECOMP_ERR_UNAUTHORIZED (no or unknown token) or
 * DECOMP_ERR_FORBIDDEN (role too low), with a reason in `detail`.
 * `principal` gets the token's name ("" when auth is off). */
int auth_check(store *s, const char *authorization, int need,
               char principal[256], char *detail, size_t detail_len);

/* Make a token for `name` with `role`: stores its hash, writes the token
 * (shown once) into `token` (≥ 80 bytes). */
int auth_token_create(store *s, const char *name, int role, char *token,
                      size_t token_len);

#endif
