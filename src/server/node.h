/* node.h — this daemon as one node of its index: its row in the nodes
 * table (GET /v1/nodes), written when it starts serving and every
 * NODE_BEAT_MS by a thread of its own, with its address, its workers and
 * how many are busy (with a job or a task). */
#ifndef DECOMPD_SERVER_NODE_H
#define DECOMPD_SERVER_NODE_H

#include "store.h"
#include "worker.h"

/* How often a node writes its row; a node whose last heartbeat is older
 * than NODE_ALIVE_MS is shown as not alive. */
#define NODE_BEAT_MS 5000
#define NODE_ALIVE_MS (3 * NODE_BEAT_MS)

typedef struct node_beat node_beat;

/* Write node `id`'s row now (listening on `address`, with `pool`'s
 * workers), then every NODE_BEAT_MS until node_stop. A failed write is
 * logged and tried again at the next beat. */
int node_start(store *s, const char *id, const char *address,
               worker_pool *pool, node_beat **out);
/* Stop beating, before the pool stops (a last beat says no job is
 * held: the workers are putting theirs back); NULL is fine. */
void node_stop(node_beat *b);

#endif
