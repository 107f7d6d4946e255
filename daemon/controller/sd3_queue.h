/*  sd3_queue - bounded request queue of the controller
 *
 *  FIFO of pending requests with a hard capacity; past it a push fails at once with
 *  SD3_EFULL (SYSTEM.md §4: RESOURCE_EXHAUSTED, never a silent drop). Holds borrowed
 *  pointers: the controller owns its requests. Owned by the controller loop thread; not
 *  thread-safe.  */
#pragma once
#include "sd3_err.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct sd3_request sd3_request_t; // defined by the controller
typedef struct sd3_queue sd3_queue_t;

sd3_queue_t *sd3_queue_new(size_t capacity); // NULL if out of memory (capacity 0: 1)
void sd3_queue_destroy(sd3_queue_t **self_p);
// Appends req. SD3_EFULL (message says the capacity) when the queue is full.
int sd3_queue_push(sd3_queue_t *self, sd3_request_t *req, sd3_err_t *err);
sd3_request_t *sd3_queue_pop(sd3_queue_t *self);        // oldest; NULL if empty
sd3_request_t *sd3_queue_peek(const sd3_queue_t *self); // oldest, left in place
// Removes req wherever it is (cancel, deadline); false when it is not queued.
bool sd3_queue_remove(sd3_queue_t *self, const sd3_request_t *req);
// 1-based position of req, 0 when not queued.
size_t sd3_queue_position(const sd3_queue_t *self, const sd3_request_t *req);
size_t sd3_queue_size(const sd3_queue_t *self);
size_t sd3_queue_capacity(const sd3_queue_t *self);
// The request at position i (0 = oldest), for scans; NULL past the end.
sd3_request_t *sd3_queue_at(const sd3_queue_t *self, size_t i);
