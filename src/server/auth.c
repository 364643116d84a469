/* auth.c — checking and making bearer tokens. Tokens are "dcp_" + 64 hex
 * chars of CSPRNG output (256 bits), so a plain SHA-256 (no salt, no slow
 * hash) is the right way to store them: there is nothing to brute-force. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "auth.h"

int auth_check(store *s, const char *authorization, int need,
               char principal[256], char *detail, size_t detail_len) {
  principal[0] = '\0';
  if (need == STORE_ROLE_NONE)
    return DECOMP_OK;
  bool any = false;
  int rc = store_token_any(s, &any);
  if (rc != DECOMP_OK) {
    snprintf(detail, detail_len, "token index: %s", store_errmsg());
    return rc;
  }
  if (!any)
    return DECOMP_OK;
  if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0) {
    snprintf(detail, detail_len, "send Authorization: Bearer <token>");
    return DECOMP_ERR_UNAUTHORIZED;
  }
  const char *tok = authorization + 7;
  while (*tok == ' ')
    tok++;
  char hex[65];
  if (!*tok || strlen(tok) > 512 || !store_sha256_hex(tok, strlen(tok), hex)) {
    snprintf(detail, detail_len, "malformed bearer token");
    return DECOMP_ERR_UNAUTHORIZED;
  }
  int role = STORE_ROLE_NONE;
  if ((rc = store_token_role(s, hex, &role, principal)) != DECOMP_OK) {
    snprintf(detail, detail_len, "token index: %s", store_errmsg());
    return rc;
  }
  if (role == STORE_ROLE_NONE) {
    snprintf(detail, detail_len, "unknown token");
    return DECOMP_ERR_UNAUTHORIZED;
  }
  if (role < need) {
    snprintf(detail, detail_len, "token '%s' has role %s; this needs %s",
             principal, store_role_name(role), store_role_name(need));
    return DECOMP_ERR_FORBIDDEN;
  }
  return DECOMP_OK;
}

int auth_token_create(store *s, const char *name, int role, char *token,
                      size_t token_len) {
  char hex[65], id[24];
  if (token_len < 70 || !store_random_id("dcp_", 32, token, token_len))
    return DECOMP_ERR_INTERNAL;
  if (!store_sha256_hex(token, strlen(token), hex))
    return DECOMP_ERR_INTERNAL;
  return store_token_put(s, name, role, hex, id);
}
