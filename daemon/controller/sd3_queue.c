/*  sd3_queue - bounded request queue of the controller (see sd3_queue.h)
 *
 *  A ring buffer of capacity slots.  */
#include "sd3_queue.h"

#include <stdbool.h>
#include <stdlib.h>

struct sd3_queue {
    sd3_request_t **ring;
    size_t capacity, head, size;
};

sd3_queue_t *
sd3_queue_new(size_t capacity)
{
    sd3_queue_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->capacity = capacity ? capacity : 1;
    if (!(self->ring = calloc(self->capacity, sizeof *self->ring))) {
        free(self);
        return NULL;
    }
    return self;
}

void
sd3_queue_destroy(sd3_queue_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->ring);
    free(*self_p);
    *self_p = NULL;
}

int
sd3_queue_push(sd3_queue_t *self, sd3_request_t *req, sd3_err_t *err)
{
    if (self->size == self->capacity)
        return sd3_err_set(err, SD3_EFULL, "queue full: %zu requests waiting (the bound)",
                           self->capacity);
    self->ring[(self->head + self->size++) % self->capacity] = req;
    return 0;
}

sd3_request_t *
sd3_queue_at(const sd3_queue_t *self, size_t i)
{
    return i < self->size ? self->ring[(self->head + i) % self->capacity] : NULL;
}

sd3_request_t *
sd3_queue_peek(const sd3_queue_t *self)
{
    return sd3_queue_at(self, 0);
}

sd3_request_t *
sd3_queue_pop(sd3_queue_t *self)
{
    if (!self->size)
        return NULL;
    sd3_request_t *req = self->ring[self->head];
    self->head = (self->head + 1) % self->capacity;
    self->size--;
    return req;
}

bool
sd3_queue_remove(sd3_queue_t *self, const sd3_request_t *req)
{
    for (size_t i = 0; i < self->size; i++) {
        if (sd3_queue_at(self, i) != req)
            continue;
        for (size_t k = i; k + 1 < self->size; k++) // close the gap, order kept
            self->ring[(self->head + k) % self->capacity] =
                self->ring[(self->head + k + 1) % self->capacity];
        self->size--;
        return true;
    }
    return false;
}

size_t
sd3_queue_position(const sd3_queue_t *self, const sd3_request_t *req)
{
    for (size_t i = 0; i < self->size; i++)
        if (sd3_queue_at(self, i) == req)
            return i + 1;
    return 0;
}

size_t
sd3_queue_size(const sd3_queue_t *self)
{
    return self->size;
}

size_t
sd3_queue_capacity(const sd3_queue_t *self)
{
    return self->capacity;
}
