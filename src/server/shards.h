/* shards.h — sharded safetensors checkpoints (the Hugging Face layout:
 * model.safetensors.index.json plus model-0000i-of-0000N.safetensors)
 * through the service: each shard a content-addressed blob uploaded on its
 * own (resumable), an index binding them into one model, and the weights
 * of such a model opened from its blobs (mapped, never copied). */
#ifndef DECOMPD_SERVER_SHARDS_H
#define DECOMPD_SERVER_SHARDS_H

#include <jansson.h>

#include "decomp/decomp.h"
#include "http.h"
#include "service.h"
#include "store.h"

/* models.format of a sharded model. */
#define SHARDS_FORMAT "safetensors-sharded"

/* PUT /v1/blobs/{digest} (HTTP_BODY_PARTIAL): a chunk of a shard's
 * resumable upload, or all of it. Complete (no Content-Range, or one that
 * ends at its TOTAL), it is hashed whole (422 upload_digest_mismatch, the
 * partial discarded, when it is not the digest named), read as a
 * safetensors file (422 with the reader's code otherwise, discarded too),
 * then stored: 201, or 200 when the blob was there already. A chunk that
 * leaves it incomplete answers 202 with Upload-Offset. */
void shards_blob_put(http_req *r);

/* The 404 of GET/HEAD /v1/blobs/{digest} for a blob that is not stored:
 * with Upload-Offset when a partial upload of it is held. */
void shards_blob_missing(http_req *r, const char *digest);

/* svc_model_bind_sharded (service.h) on the store `s`: the upload `u`
 * (finished; taken) holds {"index": INDEX, "shards": {name: digest}}, at
 * most max_json_bytes, bound here into one model named `name` (checked by
 * the caller). */
int shards_model_bind(store *s, int64_t max_json_bytes, store_upload *u,
                      const char *name, store_model *out, bool *created,
                      const char *rid, svc_problem *p);

/* The model's shards as the API shows them (a JSON array), or NULL when
 * it could not be built. */
json_t *shards_model_json(store *s, const store_model *m);

/* Open a sharded model's weights from its blobs with
 * decomp_weights_open_sharded (mapped, never copied). On failure `msg`
 * (`msglen` > 0) says what failed: the engine's message, or the store's
 * (its code then a store code: DECOMP_ERR_STORE, _IO, _NOT_FOUND…). */
int shards_weights_open(store *s, decomp_ctx *ctx, const store_model *m,
                        decomp_weights **out, char *msg, size_t msglen);

/* Whether `m` is a sharded model. */
bool shards_model_is_sharded(const store_model *m);

#endif
