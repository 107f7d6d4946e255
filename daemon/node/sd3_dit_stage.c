/*  sd3_dit_stage - one MMDiT layer range as a pipeline stage, and the per-request job
 *
 *  Step i of a request, across a pipeline of ranges r0 .. rk (possibly one):
 *    r0  sd3_dit_stage_embed   x_i duplicated into the CFG batch [cond, uncond] (+ the
 *                              cond-only batch of the skip-layer forward when SLG runs)
 *    rj  sd3_dit_stage_blocks  its blocks on both batches
 *    rk  sd3_dit_stage_finish  final layer -> v, guidance (CFG, SLG) -> D, sampler step
 *                              -> x_{i+1}, which goes back to r0
 *  These are the same calls sd3_sampler_run makes inside one mmdit object, in the same
 *  order on the same data, so a split pipeline gives the bits of an unsplit one.  */
#include <stdlib.h>
#include <string.h>

#include "sd3_schedule.h"
#include "sd3_stage.h"

struct sd3_dit_stage {
    sd3_backend_t *be;
    sd3_mmdit_t *mmdit;
};

// ---- job -------------------------------------------------------------------------------------

static sd3_tensor_t *
s_stack2(const sd3_tensor_t *a, const sd3_tensor_t *b, sd3_err_t *err)
{
    int64_t shape[SD3_MAX_DIM];
    memcpy(shape, a->shape, sizeof shape);
    shape[0] = 2;
    sd3_tensor_t *t = sd3_tensor_new_err(SD3_F32, a->ndim, shape, "cfg batch", err);
    if (t) {
        size_t half = sd3_tensor_nbytes(a);
        memcpy(t->data, a->data, half);
        memcpy((char *)t->data + half, b->data, half);
    }
    return t;
}

sd3_dit_job_t *
sd3_dit_job_new(const sd3_sampler_opts_t *opts, const float *sigmas, int n_sigmas,
                const sd3_tensor_t *cond_ctx, const sd3_tensor_t *cond_y,
                const sd3_tensor_t *uncond_ctx, const sd3_tensor_t *uncond_y,
                const sd3_tensor_t *x, sd3_err_t *err)
{
    if (n_sigmas < 2 || !cond_ctx || !cond_y || !uncond_ctx || !uncond_y || !x) {
        sd3_err_set(err, SD3_EINVAL, "mmdit job: missing inputs or fewer than 2 sigmas");
        return NULL;
    }
    if (cond_ctx->dtype != SD3_F32 || uncond_ctx->dtype != SD3_F32 || cond_ctx->ndim != 3 ||
        cond_ctx->shape[0] != 1 ||
        sd3_tensor_expect(uncond_ctx, "uncond context", SD3_F32, 3, cond_ctx->shape, err) ||
        sd3_tensor_expect(cond_y, "cond pooled", SD3_F32, 2, (int64_t[]){1, -1}, err) ||
        sd3_tensor_expect(uncond_y, "uncond pooled", SD3_F32, 2, cond_y->shape, err) ||
        sd3_tensor_expect(x, "latent", SD3_F32, 4, (int64_t[]){1, -1, -1, -1}, err)) {
        sd3_err_set(err, SD3_EINVAL, "mmdit job: cond and uncond must be f32 [1, L, W] alike");
        return NULL;
    }
    sd3_dit_job_t *job = calloc(1, sizeof *job);
    if (!job || !(job->sigmas = malloc(sizeof(float) * (size_t)n_sigmas))) {
        free(job);
        sd3_err_set(err, SD3_ENOMEM, "mmdit job: out of memory");
        return NULL;
    }
    job->opts = *opts;
    memcpy(job->sigmas, sigmas, sizeof(float) * (size_t)n_sigmas);
    job->n_sigmas = n_sigmas;
    sd3_sampler_state_init(&job->st);
    if (!(job->ctx2 = s_stack2(cond_ctx, uncond_ctx, err)) ||
        !(job->y2 = s_stack2(cond_y, uncond_y, err)) || !(job->ctx1 = sd3_tensor_clone(cond_ctx)) ||
        !(job->y1 = sd3_tensor_clone(cond_y)) || !(job->x = sd3_tensor_clone(x))) {
        sd3_err_set(err, SD3_ENOMEM, "mmdit job: out of memory");
        sd3_dit_job_destroy(&job);
    }
    return job;
}

void
sd3_dit_job_destroy(sd3_dit_job_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_dit_job_t *job = *self_p;
    sd3_tensor_destroy(&job->ctx2);
    sd3_tensor_destroy(&job->y2);
    sd3_tensor_destroy(&job->ctx1);
    sd3_tensor_destroy(&job->y1);
    sd3_tensor_destroy(&job->x);
    sd3_sampler_state_fini(&job->st);
    free(job->sigmas);
    free(job);
    *self_p = NULL;
}

bool
sd3_dit_job_done(const sd3_dit_job_t *job)
{
    return job->st.step + 1 >= job->n_sigmas;
}

bool
sd3_dit_job_slg_now(const sd3_dit_job_t *job)
{
    return sd3_sampler_slg_active(&job->opts, job->st.step);
}

// ---- stage -----------------------------------------------------------------------------------

sd3_dit_stage_t *
sd3_dit_stage_new(sd3_backend_t *be, sd3_weights_t *weights, int first, int last, sd3_err_t *err)
{
    sd3_dit_stage_t *self = calloc(1, sizeof *self);
    if (!self) {
        sd3_err_set(err, SD3_ENOMEM, "mmdit stage: out of memory");
        return NULL;
    }
    self->be = be;
    if (!(self->mmdit = sd3_mmdit_new(be, weights, first, last, err))) {
        free(self);
        return NULL;
    }
    return self;
}

void
sd3_dit_stage_destroy(sd3_dit_stage_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sd3_mmdit_destroy(&(*self_p)->mmdit);
    free(*self_p);
    *self_p = NULL;
}

sd3_mmdit_t *
sd3_dit_stage_mmdit(sd3_dit_stage_t *self)
{
    return self->mmdit;
}

int
sd3_dit_stage_embed(sd3_dit_stage_t *self, const sd3_dit_job_t *job, sd3_mmdit_act_t *act,
                    sd3_mmdit_act_t *act_skip, sd3_err_t *err)
{
    memset(act, 0, sizeof *act);
    memset(act_skip, 0, sizeof *act_skip);
    if (sd3_dit_job_done(job))
        return sd3_err_set(err, SD3_EINVAL, "mmdit: the job has no step left");
    const float ts = sd3_schedule_timestep(job->sigmas[job->st.step]);
    const float t2[2] = {ts, ts};
    const int64_t *ls = job->x->shape;
    sd3_tensor_t *x2 = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){2, ls[1], ls[2], ls[3]},
                                          "x batch", err);
    if (!x2)
        return err->code;
    size_t half = sd3_tensor_nbytes(job->x);
    memcpy(x2->data, job->x->data, half);
    memcpy((char *)x2->data + half, job->x->data, half);
    int rc = sd3_mmdit_embed(self->mmdit, x2, t2, job->y2, job->ctx2, act, err);
    sd3_tensor_destroy(&x2);
    if (rc == 0 && sd3_dit_job_slg_now(job))
        rc = sd3_mmdit_embed(self->mmdit, job->x, &ts, job->y1, job->ctx1, act_skip, err);
    if (rc != 0) {
        sd3_mmdit_act_fini(self->be, act);
        sd3_mmdit_act_fini(self->be, act_skip);
    }
    return rc;
}

int
sd3_dit_stage_blocks(sd3_dit_stage_t *self, uint64_t slg_layers, sd3_mmdit_act_t *act,
                     sd3_mmdit_act_t *act_skip, sd3_err_t *err)
{
    int rc = sd3_mmdit_blocks(self->mmdit, act, 0, err);
    if (rc == 0 && act_skip && act_skip->x)
        rc = sd3_mmdit_blocks(self->mmdit, act_skip, slg_layers, err);
    return rc;
}

int
sd3_dit_stage_finish(sd3_dit_stage_t *self, sd3_dit_job_t *job, sd3_mmdit_act_t *act,
                     sd3_mmdit_act_t *act_skip, sd3_tensor_t *denoised, sd3_err_t *err)
{
    const int64_t *ls = job->x->shape;
    const bool slg = sd3_dit_job_slg_now(job);
    sd3_tensor_t *v = NULL, *v_skip = NULL, *den = NULL;
    int rc;
    if (slg && !(act_skip && act_skip->x))
        return sd3_err_set(err, SD3_EPROTO, "mmdit: step %d needs the skip-layer batch",
                           job->st.step);
    if (!(v = sd3_tensor_new_err(SD3_F32, 4, (int64_t[]){2, ls[1], ls[2], ls[3]}, "v", err)) ||
        !(v_skip = sd3_tensor_new_err(SD3_F32, 4, ls, "v_skip", err)) ||
        !(den = sd3_tensor_new_err(SD3_F32, 4, ls, "denoised", err))) {
        rc = err->code;
        goto done;
    }
    if ((rc = sd3_mmdit_final(self->mmdit, act, v, err)) != 0)
        goto done;
    if (slg && (rc = sd3_mmdit_final(self->mmdit, act_skip, v_skip, err)) != 0)
        goto done;
    if ((rc = sd3_sampler_guide(&job->opts, job->x, job->sigmas[job->st.step], v,
                                slg ? v_skip : NULL, den, NULL, err)) != 0)
        goto done;
    if (denoised)
        memcpy(denoised->data, den->data, sd3_tensor_nbytes(den));
    rc = sd3_sampler_step(&job->opts, job->sigmas, job->n_sigmas, &job->st, job->x, den, err);
done:
    sd3_tensor_destroy(&v);
    sd3_tensor_destroy(&v_skip);
    sd3_tensor_destroy(&den);
    return rc;
}
