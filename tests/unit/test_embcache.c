/*  test_embcache - the prompt-embedding cache: keys, hits, LRU eviction, byte bound, threads
 *
 *  Also the usage example: build a key from the prompt, options and fingerprints; get; on a
 *  miss encode and put.  */
#include "sd3_embcache.h"
#include "sd3_safetensors.h"
#include "sd3_test.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// A (context, pooled) pair whose values all equal `v`: context [1, rows, 8], pooled [1, 4].
static void
s_pair(float v, int rows, sd3_tensor_t **ctx, sd3_tensor_t **pooled)
{
    *ctx = sd3_tensor_new(SD3_F32, 3, (int64_t[]){1, rows, 8});
    *pooled = sd3_tensor_new(SD3_F32, 2, (int64_t[]){1, 4});
    for (int64_t i = 0; i < sd3_tensor_numel(*ctx); i++)
        sd3_tensor_f32(*ctx)[i] = v + (float)i * 1e-3f;
    for (int64_t i = 0; i < 4; i++)
        sd3_tensor_f32(*pooled)[i] = -v;
}

static sd3_embkey_t
s_key(const char *prompt)
{
    return sd3_embcache_key(prompt, strlen(prompt), NULL, NULL, NULL);
}

static bool
s_same_key(sd3_embkey_t a, sd3_embkey_t b)
{
    return a.lo == b.lo && a.hi == b.hi;
}

static void
test_keys(void)
{
    const uint64_t wfp[2] = {1, 2}, wfp2[2] = {1, 3}, tfp[2] = {7, 8}, tfp2[2] = {9, 8};
    sd3_cond_opts_t opts = SD3_COND_OPTS_INIT;
    sd3_embkey_t base = sd3_embcache_key("a cat", 5, &opts, wfp, tfp);
    CHECK(s_same_key(base, sd3_embcache_key("a cat", 5, &opts, wfp, tfp))); // deterministic
    CHECK(!s_same_key(base, sd3_embcache_key("a cat ", 6, &opts, wfp, tfp)));
    CHECK(!s_same_key(base, sd3_embcache_key("a dog", 5, &opts, wfp, tfp)));
    CHECK(!s_same_key(base, sd3_embcache_key("a cat", 5, &opts, wfp2, tfp))); // other weights
    CHECK(!s_same_key(base, sd3_embcache_key("a cat", 5, &opts, wfp, tfp2))); // other tokenizer
    CHECK(!s_same_key(base, sd3_embcache_key("a cat", 5, &opts, NULL, tfp)));
    sd3_cond_opts_t o = opts;
    o.no_t5 = true;
    CHECK(!s_same_key(base, sd3_embcache_key("a cat", 5, &o, wfp, tfp)));
    o = opts;
    o.t5_length = 256;
    CHECK(!s_same_key(base, sd3_embcache_key("a cat", 5, &o, wfp, tfp)));
    o = opts;
    o.zero_t5_rows = 0;
    CHECK(!s_same_key(base, sd3_embcache_key("a cat", 5, &o, wfp, tfp)));
    o = opts;
    o.context_width = 4096;
    CHECK(!s_same_key(base, sd3_embcache_key("a cat", 5, &o, wfp, tfp)));
    // NULL opts means the defaults; embedded NUL bytes count
    CHECK(s_same_key(sd3_embcache_key("x", 1, NULL, wfp, tfp),
                     sd3_embcache_key("x", 1, &opts, wfp, tfp)));
    CHECK(!s_same_key(sd3_embcache_key("x\0y", 3, NULL, NULL, NULL), s_key("x")));
    // the empty prompt (the negative prompt) is a key like any other
    CHECK(!s_same_key(s_key(""), s_key(" ")));
}

static void
test_hit_miss(void)
{
    sd3_tensor_t *c = NULL, *p = NULL, *gc = NULL, *gp = NULL;
    sd3_embcache_t *cache = sd3_embcache_new(1 << 20);
    sd3_embcache_stats_t st;
    sd3_err_t err = {0};
    CHECK(cache);
    s_pair(1.5f, 10, &c, &p);
    CHECK(sd3_embcache_get(cache, s_key("a"), &gc, &gp, &err) == 0);
    CHECK(gc == NULL && gp == NULL);
    CHECK(sd3_embcache_put(cache, s_key("a"), c, p, &err) == 0);
    // the cache holds copies: changing ours must not change what it returns
    sd3_tensor_f32(c)[0] = 99.0f;
    CHECK(sd3_embcache_get(cache, s_key("a"), &gc, &gp, &err) == 1);
    CHECK(gc && gp && gc != c && gp != p);
    if (gc && gp) {
        CHECK(gc->ndim == 3 && gc->shape[1] == 10 && gc->shape[2] == 8);
        CHECK(sd3_tensor_f32(gc)[0] == 1.5f);
        CHECK(sd3_tensor_f32(gc)[79] == 1.5f + 79e-3f);
        CHECK(sd3_tensor_f32(gp)[3] == -1.5f);
    }
    sd3_tensor_destroy(&gc);
    sd3_tensor_destroy(&gp);
    CHECK(sd3_embcache_get(cache, s_key("b"), &gc, &gp, &err) == 0);
    sd3_embcache_stats(cache, &st);
    CHECK_MSG(st.hits == 1 && st.misses == 2 && st.entries == 1 && st.insertions == 1,
              "hits %llu misses %llu entries %zu", (unsigned long long)st.hits,
              (unsigned long long)st.misses, st.entries);
    CHECK(st.bytes == sd3_embcache_entry_bytes(c, p));
    CHECK(st.bytes == 256 + 10 * 8 * 4 + 4 * 4);
    // replacing the same key keeps one entry and its new value
    sd3_tensor_destroy(&c);
    sd3_tensor_destroy(&p);
    s_pair(2.5f, 20, &c, &p);
    CHECK(sd3_embcache_put(cache, s_key("a"), c, p, &err) == 0);
    sd3_embcache_stats(cache, &st);
    CHECK(st.entries == 1 && st.bytes == sd3_embcache_entry_bytes(c, p));
    CHECK(sd3_embcache_get(cache, s_key("a"), &gc, &gp, &err) == 1);
    CHECK(gc && gc->shape[1] == 20 && sd3_tensor_f32(gc)[0] == 2.5f);
    sd3_tensor_destroy(&gc);
    sd3_tensor_destroy(&gp);
    // bad input: a NULL tensor is refused with EINVAL
    sd3_err_t e2 = {0};
    CHECK(sd3_embcache_put(cache, s_key("z"), NULL, p, &e2) == SD3_EINVAL && e2.msg[0]);
    sd3_embcache_clear(cache);
    sd3_embcache_stats(cache, &st);
    CHECK(st.entries == 0 && st.bytes == 0 && st.hits == 2);
    CHECK(sd3_embcache_get(cache, s_key("a"), &gc, &gp, &err) == 0);
    sd3_tensor_destroy(&c);
    sd3_tensor_destroy(&p);
    sd3_embcache_destroy(&cache);
    CHECK(cache == NULL);
    sd3_embcache_destroy(&cache); // NULL-safe
}

static void
test_eviction(void)
{
    sd3_tensor_t *c = NULL, *p = NULL, *gc = NULL, *gp = NULL;
    sd3_err_t err = {0};
    sd3_embcache_stats_t st;
    s_pair(0.0f, 10, &c, &p);
    const size_t one = sd3_embcache_entry_bytes(c, p);
    sd3_embcache_t *cache = sd3_embcache_new(3 * one + one / 2); // room for three
    const char *names[] = {"A", "B", "C", "D", "E"};
    for (int i = 0; i < 3; i++)
        CHECK(sd3_embcache_put(cache, s_key(names[i]), c, p, &err) == 0);
    // touch A: now B is the least recently used
    CHECK(sd3_embcache_get(cache, s_key("A"), &gc, &gp, &err) == 1);
    sd3_tensor_destroy(&gc);
    sd3_tensor_destroy(&gp);
    CHECK(sd3_embcache_put(cache, s_key("D"), c, p, &err) == 0);
    CHECK(!sd3_embcache_contains(cache, s_key("B")));
    CHECK(sd3_embcache_contains(cache, s_key("A")) && sd3_embcache_contains(cache, s_key("C")) &&
          sd3_embcache_contains(cache, s_key("D")));
    CHECK(sd3_embcache_put(cache, s_key("E"), c, p, &err) == 0); // evicts C (order: E D A C)
    CHECK(!sd3_embcache_contains(cache, s_key("C")));
    CHECK(sd3_embcache_contains(cache, s_key("A")));
    sd3_embcache_stats(cache, &st);
    CHECK_MSG(st.evictions == 2 && st.entries == 3, "evictions %llu entries %zu",
              (unsigned long long)st.evictions, st.entries);
    CHECK(st.bytes == 3 * one && st.bytes <= st.max_bytes);
    // a bigger entry evicts as many as it needs, in LRU order (A, then D)
    sd3_tensor_t *bc = NULL, *bp = NULL;
    s_pair(3.0f, 25, &bc, &bp); // about 2.4 entries' worth
    CHECK(sd3_embcache_put(cache, s_key("big"), bc, bp, &err) == 0);
    sd3_embcache_stats(cache, &st);
    CHECK(st.bytes <= st.max_bytes);
    CHECK(!sd3_embcache_contains(cache, s_key("A")) && !sd3_embcache_contains(cache, s_key("D")));
    CHECK(sd3_embcache_contains(cache, s_key("E")) && sd3_embcache_contains(cache, s_key("big")));
    CHECK(st.evictions == 4 && st.entries == 2);
    sd3_tensor_destroy(&bc);
    sd3_tensor_destroy(&bp);
    // a pair larger than the whole bound is not stored and evicts nothing
    s_pair(4.0f, 200, &bc, &bp);
    CHECK(sd3_embcache_put(cache, s_key("huge"), bc, bp, &err) == 0);
    CHECK(!sd3_embcache_contains(cache, s_key("huge")));
    sd3_embcache_stats(cache, &st);
    CHECK(st.entries == 2 && st.evictions == 4);
    sd3_tensor_destroy(&bc);
    sd3_tensor_destroy(&bp);
    // many entries through a small cache: the bound always holds, the table grows
    for (int i = 0; i < 500; i++) {
        char name[32];
        snprintf(name, sizeof name, "prompt %d", i);
        CHECK(sd3_embcache_put(cache, s_key(name), c, p, &err) == 0);
        sd3_embcache_stats(cache, &st);
        CHECK(st.bytes <= st.max_bytes);
    }
    CHECK(sd3_embcache_contains(cache, s_key("prompt 499")));
    CHECK(!sd3_embcache_contains(cache, s_key("prompt 496")));
    sd3_tensor_destroy(&c);
    sd3_tensor_destroy(&p);
    sd3_embcache_destroy(&cache);

    // a large table: every entry stays findable after the table grows
    cache = sd3_embcache_new((size_t)1 << 30);
    s_pair(1.0f, 1, &c, &p);
    for (int i = 0; i < 1000; i++) {
        char name[32];
        snprintf(name, sizeof name, "k%d", i);
        sd3_embcache_put(cache, s_key(name), c, p, &err);
    }
    int found = 0;
    for (int i = 0; i < 1000; i++) {
        char name[32];
        snprintf(name, sizeof name, "k%d", i);
        found += sd3_embcache_contains(cache, s_key(name));
    }
    CHECK_MSG(found == 1000, "found %d of 1000", found);
    sd3_tensor_destroy(&c);
    sd3_tensor_destroy(&p);
    sd3_embcache_destroy(&cache);
}

typedef struct {
    sd3_embcache_t *cache;
    int id;
    int gets, hits;
} s_worker_t;

static void *
s_worker(void *arg)
{
    s_worker_t *w = arg;
    sd3_tensor_t *c, *p, *gc, *gp;
    s_pair((float)w->id, 4, &c, &p);
    for (int i = 0; i < 2000; i++) {
        char name[32];
        snprintf(name, sizeof name, "p%d", (i * 7 + w->id) % 40);
        int rc = sd3_embcache_get(w->cache, s_key(name), &gc, &gp, NULL);
        w->gets++;
        if (rc == 1) {
            w->hits++;
            // every value a thread stored is a full pair with consistent content
            if (gc->shape[1] != 4 || sd3_tensor_f32(gp)[0] != -sd3_tensor_f32(gc)[0])
                w->hits = -1000000;
            sd3_tensor_destroy(&gc);
            sd3_tensor_destroy(&gp);
        } else {
            sd3_embcache_put(w->cache, s_key(name), c, p, NULL);
        }
    }
    sd3_tensor_destroy(&c);
    sd3_tensor_destroy(&p);
    return NULL;
}

static void
test_threads(void)
{
    sd3_tensor_t *c, *p;
    s_pair(0, 4, &c, &p);
    sd3_embcache_t *cache = sd3_embcache_new(20 * sd3_embcache_entry_bytes(c, p));
    s_worker_t w[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (s_worker_t){.cache = cache, .id = i + 1};
        pthread_create(&th[i], NULL, s_worker, &w[i]);
    }
    int gets = 0, hits = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        gets += w[i].gets;
        hits += w[i].hits;
    }
    sd3_embcache_stats_t st;
    sd3_embcache_stats(cache, &st);
    CHECK(hits >= 0);
    CHECK_MSG(st.hits == (uint64_t)hits && st.hits + st.misses == (uint64_t)gets,
              "hits %llu/%d misses %llu gets %d", (unsigned long long)st.hits, hits,
              (unsigned long long)st.misses, gets);
    CHECK(st.entries <= 20 && st.bytes <= st.max_bytes);
    CHECK(st.evictions > 0 && hits > 0);
    sd3_tensor_destroy(&c);
    sd3_tensor_destroy(&p);
    sd3_embcache_destroy(&cache);
}

static void
test_files_fingerprint(void)
{
    const char *dir = sd3_test_tmpdir();
    char a[512], b[512];
    uint64_t f1[2], f2[2], f3[2];
    sd3_err_t err = {0};
    snprintf(a, sizeof a, "%s/vocab.json", dir);
    snprintf(b, sizeof b, "%s/merges.txt", dir);
    FILE *f = fopen(a, "w");
    fputs("{\"a\": 1}", f);
    fclose(f);
    f = fopen(b, "w");
    fputs("a b\n", f);
    fclose(f);
    const char *paths[3] = {a, b, NULL};
    CHECK(sd3_embcache_files_fingerprint(paths, 3, f1, &err) == 0);
    CHECK(sd3_embcache_files_fingerprint(paths, 3, f2, &err) == 0);
    CHECK(f1[0] == f2[0] && f1[1] == f2[1]);
    f = fopen(b, "w");
    fputs("a c\n", f);
    fclose(f);
    CHECK(sd3_embcache_files_fingerprint(paths, 3, f3, &err) == 0);
    CHECK(f1[0] != f3[0] || f1[1] != f3[1]);
    const char *missing[1] = {"/nonexistent/spiece.model"};
    CHECK(sd3_embcache_files_fingerprint(missing, 1, f3, &err) == SD3_EIO);
    CHECK(strstr(err.msg, "spiece.model") != NULL);
    remove(a);
    remove(b);
}

// Writes a one-tensor CLIP-named file whose data is 0..n-1 with element `poke` set to -1.
static void
s_write_weights(const char *path, int64_t poke)
{
    sd3_tensor_t *t = sd3_tensor_new(SD3_F32, 2, (int64_t[]){64, 16});
    for (int64_t i = 0; i < 64 * 16; i++)
        sd3_tensor_f32(t)[i] = i == poke ? -1.0f : (float)i;
    t->name = "text_model.embeddings.token_embedding.weight";
    const sd3_tensor_t *list[1] = {t};
    sd3_err_t err = {0};
    CHECK_MSG(sd3_st_write_tensors(path, list, 1, NULL, 0, &err) == 0, "%s", err.msg);
    sd3_tensor_destroy(&t);
}

static void
s_weights_fp(const char *path, uint64_t out[2])
{
    sd3_err_t err = {0};
    sd3_weights_t *w = sd3_weights_open_path(path, SD3_COMP_CLIP_L, &err);
    CHECK_MSG(w != NULL, "%s", err.msg);
    out[0] = out[1] = 0;
    if (w)
        sd3_embcache_weights_fingerprint(&w, 1, out);
    sd3_weights_destroy(&w);
}

static void
test_weights_fingerprint(void)
{
    const char *dir = sd3_test_tmpdir();
    char a[512], b[512];
    uint64_t fa[2], fa2[2], fb[2], fc[2], none[2];
    snprintf(a, sizeof a, "%s/w_a.safetensors", dir);
    snprintf(b, sizeof b, "%s/w_b.safetensors", dir);
    s_write_weights(a, -1);
    s_write_weights(b, -1);
    s_weights_fp(a, fa);
    s_weights_fp(b, fa2);
    CHECK(fa[0] == fa2[0] && fa[1] == fa2[1]); // same content, other file: same fingerprint
    s_write_weights(b, 0);                     // first element: always sampled
    s_weights_fp(b, fb);
    CHECK(fa[0] != fb[0] || fa[1] != fb[1]);
    s_write_weights(b, 64 * 16 - 1); // last element: always sampled
    s_weights_fp(b, fc);
    CHECK(fa[0] != fc[0] || fa[1] != fc[1]);
    sd3_weights_t *nothing = NULL;
    sd3_embcache_weights_fingerprint(&nothing, 1, none); // a missing component is a value too
    CHECK(fa[0] != none[0] || fa[1] != none[1]);
    remove(a);
    remove(b);
}

int
main(void)
{
    test_keys();
    test_hit_miss();
    test_eviction();
    test_threads();
    test_files_fingerprint();
    test_weights_fingerprint();
    return TEST_RESULT();
}
