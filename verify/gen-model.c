// gen-model: deterministic random-weight GGUF models for the llama-paged gates and benchmarks.
//
//   gen-model --preset NAME [--seed N] [--vocab PATH.gguf] -o OUT.gguf
//   gen-model --list
//
// Only the public API of the stock build is used: the metadata is built with the gguf C API,
// llama_model_init_from_user() creates the tensors the arch asks for and calls back for their
// data, and llama_model_save_to_file() writes the model. In the init-from-user path every
// optional tensor of the arch is created (per-matmul .scale/.input_scale, biases, legacy
// layouts, fused expert tensors), so the saved file is then rewritten once with the gguf API:
// optional tensors that real checkpoints lack are dropped and the fused gate/up expert tensor
// is split into the separate tensors that convert_hf_to_gguf.py writes by default.
//
// The output is a pure function of (preset, seed, vocab file): every tensor is filled from its
// own PRNG stream keyed by seed and tensor name, so the file is byte-identical across runs.

#define _POSIX_C_SOURCE 200809L

#include "ggml.h"
#include "ggml-backend.h"
#include "gguf.h"
#include "llama.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define GM_TEST_VOCAB_BENCH 32000 // test-vocab size for bench presets run without --vocab

//
// presets
//

struct gm_preset {
    const char * name;
    const char * desc;
    const char * arch;           // general.architecture
    bool         bench;          // real tokenizer from --vocab
    bool         tied;           // no output.weight: the output reuses token_embd (as small Qwen/Llama do)

    uint32_t n_vocab;            // test vocab size (bench presets take it from --vocab)
    uint32_t n_ctx;              // context_length
    uint32_t n_embd;
    uint32_t n_layer;
    uint32_t n_head;
    uint32_t n_head_kv;
    uint32_t head_dim;           // attention.key_length == value_length
    uint32_t n_rot;              // rope.dimension_count (partial rotary on Qwen3.5/Next)
    int32_t  rope_sections[4];   // Qwen3.5 imrope sections; must sum to n_rot/2
    float    rope_freq_base;
    float    rms_eps;
    uint32_t n_ff;               // dense FFN (0: MoE only)

    // MoE
    uint32_t n_expert;
    uint32_t n_expert_used;
    uint32_t n_ff_exp;
    uint32_t n_ff_shexp;         // shared expert (0: none)

    // gated delta net (hybrid archs); d_inner = d_state * dt_rank
    uint32_t full_attn_interval; // every N-th layer is full attention
    uint32_t ssm_d_state;        // head dim of the linear-attention heads
    uint32_t ssm_dt_rank;        // number of value heads
    uint32_t ssm_n_group;        // number of key heads
    uint32_t ssm_d_conv;
};

// Gate presets are tiny so a greedy run is a few ms per token; their shapes keep the structure
// of the real models (GQA, partial rotary, H_v = 2*H_k in the delta net, shared experts) so the
// same code paths run. Head dims and d_state follow the real models where kernels care.
static const struct gm_preset gm_presets[] = {
    {
        .name = "gate-llama", .desc = "tiny dense llama (4 layers, n_embd 256, GQA 4/2, head 64)",
        .arch = "llama", .bench = false, .tied = false,
        .n_vocab = 512, .n_ctx = 8192, .n_embd = 256, .n_layer = 4,
        .n_head = 4, .n_head_kv = 2, .head_dim = 64, .n_rot = 64,
        .rope_freq_base = 500000.0f, .rms_eps = 1e-5f, .n_ff = 768,
    },
    {
        .name = "gate-qwen3", .desc = "tiny dense qwen3 (4 layers, n_embd 256, GQA 4/2, head 128, q/k norm)",
        .arch = "qwen3", .bench = false, .tied = false,
        .n_vocab = 512, .n_ctx = 8192, .n_embd = 256, .n_layer = 4,
        .n_head = 4, .n_head_kv = 2, .head_dim = 128, .n_rot = 128,
        .rope_freq_base = 1000000.0f, .rms_eps = 1e-6f, .n_ff = 768,
    },
    {
        .name = "gate-qwen3moe", .desc = "tiny qwen3moe (4 layers, n_embd 256, 8 experts top-2)",
        .arch = "qwen3moe", .bench = false, .tied = false,
        .n_vocab = 512, .n_ctx = 8192, .n_embd = 256, .n_layer = 4,
        .n_head = 4, .n_head_kv = 2, .head_dim = 128, .n_rot = 128,
        .rope_freq_base = 1000000.0f, .rms_eps = 1e-6f, .n_ff = 768,
        .n_expert = 8, .n_expert_used = 2, .n_ff_exp = 256,
    },
    {
        .name = "gate-qwen35", .desc = "tiny qwen35 hybrid (8 layers: 6 delta-net + 2 full attention)",
        .arch = "qwen35", .bench = false, .tied = false,
        .n_vocab = 512, .n_ctx = 8192, .n_embd = 256, .n_layer = 8,
        .n_head = 4, .n_head_kv = 2, .head_dim = 128, .n_rot = 32, .rope_sections = { 6, 5, 5, 0 },
        .rope_freq_base = 10000000.0f, .rms_eps = 1e-6f, .n_ff = 768,
        .full_attn_interval = 4, .ssm_d_state = 128, .ssm_dt_rank = 4, .ssm_n_group = 2, .ssm_d_conv = 4,
    },
    {
        .name = "gate-qwen35moe", .desc = "tiny qwen35moe hybrid (8 layers, 8 experts top-2 + shared expert)",
        .arch = "qwen35moe", .bench = false, .tied = false,
        .n_vocab = 512, .n_ctx = 8192, .n_embd = 256, .n_layer = 8,
        .n_head = 4, .n_head_kv = 2, .head_dim = 128, .n_rot = 32, .rope_sections = { 6, 5, 5, 0 },
        .rope_freq_base = 10000000.0f, .rms_eps = 1e-6f,
        .n_expert = 8, .n_expert_used = 2, .n_ff_exp = 256, .n_ff_shexp = 256,
        .full_attn_interval = 4, .ssm_d_state = 128, .ssm_dt_rank = 4, .ssm_n_group = 2, .ssm_d_conv = 4,
    },
    {
        .name = "gate-qwen3next", .desc = "tiny qwen3next hybrid (8 layers, 8 experts top-2 + shared expert)",
        .arch = "qwen3next", .bench = false, .tied = false,
        .n_vocab = 512, .n_ctx = 8192, .n_embd = 256, .n_layer = 8,
        .n_head = 4, .n_head_kv = 2, .head_dim = 128, .n_rot = 32,
        .rope_freq_base = 10000000.0f, .rms_eps = 1e-6f,
        .n_expert = 8, .n_expert_used = 2, .n_ff_exp = 256, .n_ff_shexp = 256,
        .full_attn_interval = 4, .ssm_d_state = 128, .ssm_dt_rank = 4, .ssm_n_group = 2, .ssm_d_conv = 4,
    },
    {
        // Qwen3.5-0.8B text model (its vocab is 248k; here the vocab of --vocab is used)
        .name = "bench-qwen35", .desc = "Qwen3.5-0.8B shape: 24 layers (18 delta-net + 6 attention), n_embd 1024, tied",
        .arch = "qwen35", .bench = true, .tied = true,
        .n_ctx = 32768, .n_embd = 1024, .n_layer = 24,
        .n_head = 8, .n_head_kv = 2, .head_dim = 256, .n_rot = 64, .rope_sections = { 11, 11, 10, 0 },
        .rope_freq_base = 10000000.0f, .rms_eps = 1e-6f, .n_ff = 3584,
        .full_attn_interval = 4, .ssm_d_state = 128, .ssm_dt_rank = 16, .ssm_n_group = 16, .ssm_d_conv = 4,
    },
    {
        // the bench-qwen35 trunk with a Qwen3.5-MoE style FFN: 80 routed experts (top-8) of 256
        // plus one shared expert of 512; expert rows stay multiples of 256 for the k-quants
        .name = "bench-qwen35moe", .desc = "small Qwen3.5 MoE: bench-qwen35 trunk, 80 experts top-8 (ff 256) + shared (ff 512), ~1.9B total / ~0.6B active",
        .arch = "qwen35moe", .bench = true, .tied = true,
        .n_ctx = 32768, .n_embd = 1024, .n_layer = 24,
        .n_head = 8, .n_head_kv = 2, .head_dim = 256, .n_rot = 64, .rope_sections = { 11, 11, 10, 0 },
        .rope_freq_base = 10000000.0f, .rms_eps = 1e-6f,
        .n_expert = 80, .n_expert_used = 8, .n_ff_exp = 256, .n_ff_shexp = 512,
        .full_attn_interval = 4, .ssm_d_state = 128, .ssm_dt_rank = 16, .ssm_n_group = 16, .ssm_d_conv = 4,
    },
    {
        .name = "bench-llama", .desc = "dense llama ~0.64B: 16 layers, n_embd 1536, GQA 12/4, head 128, ff 4096, tied",
        .arch = "llama", .bench = true, .tied = true,
        .n_ctx = 32768, .n_embd = 1536, .n_layer = 16,
        .n_head = 12, .n_head_kv = 4, .head_dim = 128, .n_rot = 128,
        .rope_freq_base = 500000.0f, .rms_eps = 1e-5f, .n_ff = 4096,
    },
};

#define GM_N_PRESETS (sizeof(gm_presets)/sizeof(gm_presets[0]))

static const struct gm_preset * gm_find_preset(const char * name) {
    for (size_t i = 0; i < GM_N_PRESETS; i++) {
        if (strcmp(gm_presets[i].name, name) == 0) {
            return &gm_presets[i];
        }
    }
    return NULL;
}

static bool gm_is_hybrid(const struct gm_preset * p) {
    return p->full_attn_interval > 0;
}

//
// helpers
//

static int gm_verbosity = 0;

static void gm_err(const char * fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "gen-model: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

static bool gm_starts_with(const char * s, const char * prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool gm_ends_with(const char * s, const char * suffix) {
    const size_t ns = strlen(s);
    const size_t nx = strlen(suffix);
    return ns >= nx && strcmp(s + ns - nx, suffix) == 0;
}

// llama.cpp logs every loaded key and tensor at INFO; keep warnings and errors unless -v
static void gm_log_cb(enum ggml_log_level level, const char * text, void * user_data) {
    static enum ggml_log_level last = GGML_LOG_LEVEL_INFO;
    (void) user_data;
    if (level != GGML_LOG_LEVEL_CONT) {
        last = level;
    }
    if (gm_verbosity > 0 || last >= GGML_LOG_LEVEL_WARN) {
        fputs(text, stderr);
    }
}

static bool gm_silent_progress(float progress, void * user_data) {
    (void) progress;
    (void) user_data;
    return true;
}

//
// deterministic random numbers
//

// splitmix64: tiny, statistically good, and fully specified here, so the bytes do not depend on
// the C library (rand()) or on the order in which llama.cpp asks for the tensors
static uint64_t gm_splitmix64(uint64_t * state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t gm_fnv1a(const char * s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) {
        h ^= (uint8_t) *s;
        h *= 0x100000001b3ull;
    }
    return h;
}

struct gm_rng {
    uint64_t state;
    bool     has_spare;
    double   spare;
};

static void gm_rng_init(struct gm_rng * rng, uint64_t seed, const char * tensor_name) {
    uint64_t s = seed;
    rng->state     = gm_splitmix64(&s) ^ gm_fnv1a(tensor_name);
    rng->has_spare = false;
    rng->spare     = 0.0;
}

// uniform in [0, 1)
static double gm_uniform(struct gm_rng * rng) {
    return (double) (gm_splitmix64(&rng->state) >> 11) * 0x1.0p-53;
}

// standard normal (Box-Muller; the second value of each pair is kept for the next call)
static double gm_normal(struct gm_rng * rng) {
    if (rng->has_spare) {
        rng->has_spare = false;
        return rng->spare;
    }
    const double u1 = 1.0 - gm_uniform(rng); // (0, 1]: log() stays finite
    const double u2 = gm_uniform(rng);
    const double r  = sqrt(-2.0*log(u1));
    const double th = 6.283185307179586476925*u2; // 2*pi
    rng->spare     = r*sin(th);
    rng->has_spare = true;
    return r*cos(th);
}

//
// which tensors are kept, and how they are initialized
//

// Optional tensors that llama_model_init_from_user() creates but the real checkpoints of these
// archs do not have. Biases and scales would add an op per matmul; legacy layouts (qwen3next's
// fused ssm_in, unused next to attn_qkv + attn_gate) would only take memory and file space.
static bool gm_tensor_dropped(const struct gm_preset * p, const char * name) {
    if (gm_ends_with(name, ".scale") || gm_ends_with(name, ".input_scale")) {
        return true; // per-tensor NVFP4-style scales
    }
    if (gm_ends_with(name, ".bias")) {
        return !gm_ends_with(name, ".ssm_dt.bias"); // dt bias is a real parameter of the delta net
    }
    if (gm_ends_with(name, ".ssm_in.weight")) {
        return true; // legacy fused qkvz of qwen3next
    }
    if (gm_starts_with(name, "rope_freqs") || gm_starts_with(name, "rope_factors")) {
        return true; // llama3-style rope scaling factors
    }
    if (gm_starts_with(name, "cls")) {
        return true; // rerank/classifier heads
    }
    if (p->tied && strcmp(name, "output.weight") == 0) {
        return true;
    }
    return false;
}

enum gm_init {
    GM_INIT_NORMAL, // N(0, 1/sqrt(fan_in)): keeps activations O(1) through every matmul
    GM_INIT_NORM,   // 1 + small noise (RMSNorm gains; Qwen3.5 stores 1 + w in the GGUF)
    GM_INIT_SSM_A,  // A = -exp(A_log) < 0, in [-16, -1] as in Mamba2/GDN init
    GM_INIT_SSM_DT, // inverse softplus of dt in [1e-3, 1e-1] (log-uniform), as in Mamba2/GDN init
};

static enum gm_init gm_tensor_init(const char * name) {
    if (gm_ends_with(name, ".ssm_a")) {
        return GM_INIT_SSM_A; // note: not ".ssm_alpha.weight", which is a plain projection
    }
    if (gm_ends_with(name, ".ssm_dt.bias")) {
        return GM_INIT_SSM_DT;
    }
    if (gm_ends_with(name, "norm.weight")) {
        return GM_INIT_NORM;
    }
    return GM_INIT_NORMAL;
}

static float gm_sample(enum gm_init init, struct gm_rng * rng, float stdev) {
    switch (init) {
        case GM_INIT_NORM:
            return (float) (1.0 + 0.02*gm_normal(rng));
        case GM_INIT_SSM_A:
            return (float) -(1.0 + 15.0*gm_uniform(rng));
        case GM_INIT_SSM_DT:
            {
                const double dt = exp(log(1e-3) + gm_uniform(rng)*(log(1e-1) - log(1e-3)));
                return (float) log(expm1(dt)); // softplus(bias) == dt
            }
        case GM_INIT_NORMAL:
        default:
            return (float) (stdev*gm_normal(rng));
    }
}

struct gm_fill_ctx {
    const struct gm_preset * preset;
    uint64_t                 seed;
    bool                     failed;
    char                     failed_name[GGML_MAX_NAME];
};

// llama_model_set_tensor_data_t: called once per tensor created by the arch
static void gm_fill_tensor(struct ggml_tensor * tensor, void * userdata) {
    struct gm_fill_ctx * fc = (struct gm_fill_ctx *) userdata;

    if (fc->failed || gm_tensor_dropped(fc->preset, tensor->name)) {
        return; // dropped tensors never reach the output: do not spend time on them
    }
    if (tensor->type != GGML_TYPE_F32) {
        // the metadata has no typed tensors, so everything is created as F32
        fc->failed = true;
        snprintf(fc->failed_name, sizeof(fc->failed_name), "%s", tensor->name);
        return;
    }

    const enum gm_init init = gm_tensor_init(tensor->name);
    const float stdev = 1.0f/sqrtf((float) tensor->ne[0]);
    const int64_t n   = ggml_nelements(tensor);

    struct gm_rng rng;
    gm_rng_init(&rng, fc->seed, tensor->name);

    // fill through a bounce buffer: the tensor may live in any backend buffer
    enum { CHUNK = 1 << 20 };
    static float buf[CHUNK];
    for (int64_t i0 = 0; i0 < n; i0 += CHUNK) {
        const int64_t nc = n - i0 < CHUNK ? n - i0 : CHUNK;
        for (int64_t i = 0; i < nc; i++) {
            buf[i] = gm_sample(init, &rng, stdev);
        }
        ggml_backend_tensor_set(tensor, buf, (size_t) i0*sizeof(float), (size_t) nc*sizeof(float));
    }
}

//
// metadata
//

static char * gm_key(char * buf, size_t size, const char * arch, const char * suffix) {
    snprintf(buf, size, "%s.%s", arch, suffix);
    return buf;
}

// copies the tokenizer.* keys of src into dst, values untouched
static void gm_copy_tokenizer_kv(struct gguf_context * dst, const struct gguf_context * src) {
    struct gguf_context * tmp = gguf_init_empty();
    gguf_set_kv(tmp, src);
    for (int64_t i = gguf_get_n_kv(tmp) - 1; i >= 0; i--) {
        const char * key = gguf_get_key(tmp, i);
        if (!gm_starts_with(key, "tokenizer.")) {
            gguf_remove_key(tmp, key);
        }
    }
    gguf_set_kv(dst, tmp);
    gguf_free(tmp);
}

// The in-tree "test" tokenizer (as in tests/test-llama-archs.cpp): fixed-size byte chunks map to
// ids and ids detokenize as hex, no special tokens, so a greedy run always yields -n tokens.
static void gm_add_test_vocab(struct gguf_context * meta, uint32_t n_vocab) {
    char ** tokens = calloc(n_vocab, sizeof(char *));
    float * scores = calloc(n_vocab, sizeof(float));
    for (uint32_t i = 0; i < n_vocab; i++) {
        tokens[i] = malloc(16);
        snprintf(tokens[i], 16, "tok_%" PRIu32, i);
    }
    gguf_set_val_str(meta, "tokenizer.ggml.model", "test");
    gguf_set_arr_str(meta, "tokenizer.ggml.tokens", (const char **) tokens, n_vocab);
    gguf_set_arr_data(meta, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, scores, n_vocab);
    for (uint32_t i = 0; i < n_vocab; i++) {
        free(tokens[i]);
    }
    free(tokens);
    free(scores);
}

static struct gguf_context * gm_build_metadata(const struct gm_preset * p, const struct gguf_context * vocab, uint32_t n_vocab) {
    struct gguf_context * meta = gguf_init_empty();
    const char * a = p->arch;
    char k[128];

    gguf_set_val_str(meta, "general.architecture", a);
    gguf_set_val_str(meta, "general.name", p->name);

    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "vocab_size"),                     n_vocab);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "context_length"),                 p->n_ctx);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "embedding_length"),               p->n_embd);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "block_count"),                    p->n_layer);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "attention.head_count"),           p->n_head);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "attention.head_count_kv"),        p->n_head_kv);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "attention.key_length"),           p->head_dim);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "attention.value_length"),         p->head_dim);
    gguf_set_val_f32(meta, gm_key(k, sizeof(k), a, "attention.layer_norm_rms_epsilon"), p->rms_eps);
    gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "rope.dimension_count"),           p->n_rot);
    gguf_set_val_f32(meta, gm_key(k, sizeof(k), a, "rope.freq_base"),                 p->rope_freq_base);
    if (p->rope_sections[0] + p->rope_sections[1] + p->rope_sections[2] + p->rope_sections[3] > 0) {
        gguf_set_arr_data(meta, gm_key(k, sizeof(k), a, "rope.dimension_sections"), GGUF_TYPE_INT32, p->rope_sections, 4);
    }
    if (p->n_ff > 0) {
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "feed_forward_length"),        p->n_ff);
    }
    if (p->n_expert > 0) {
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "expert_count"),               p->n_expert);
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "expert_used_count"),          p->n_expert_used);
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "expert_feed_forward_length"), p->n_ff_exp);
        if (p->n_ff_shexp > 0) {
            gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "expert_shared_feed_forward_length"), p->n_ff_shexp);
        }
    }
    if (gm_is_hybrid(p)) {
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "full_attention_interval"),    p->full_attn_interval);
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "ssm.conv_kernel"),            p->ssm_d_conv);
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "ssm.state_size"),             p->ssm_d_state);
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "ssm.inner_size"),             p->ssm_d_state*p->ssm_dt_rank);
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "ssm.time_step_rank"),         p->ssm_dt_rank);
        gguf_set_val_u32(meta, gm_key(k, sizeof(k), a, "ssm.group_count"),            p->ssm_n_group);
    }

    if (vocab) {
        gm_copy_tokenizer_kv(meta, vocab);
    } else {
        gm_add_test_vocab(meta, n_vocab);
    }
    return meta;
}

// the vocab-only gguf must at least name a tokenizer and list its tokens
static struct gguf_context * gm_load_vocab(const char * path, uint32_t * n_vocab) {
    FILE * f = fopen(path, "rb");
    if (!f) {
        gm_err("cannot open vocab file '%s': %s", path, strerror(errno));
        return NULL;
    }
    fclose(f);

    struct gguf_init_params params = { /*.no_alloc =*/ true, /*.ctx =*/ NULL };
    struct gguf_context * vocab = gguf_init_from_file(path, params);
    if (!vocab) {
        gm_err("'%s' is not a readable GGUF file", path);
        return NULL;
    }
    const int64_t kid_model  = gguf_find_key(vocab, "tokenizer.ggml.model");
    const int64_t kid_tokens = gguf_find_key(vocab, "tokenizer.ggml.tokens");
    if (kid_model < 0 || gguf_get_kv_type(vocab, kid_model) != GGUF_TYPE_STRING ||
        kid_tokens < 0 || gguf_get_kv_type(vocab, kid_tokens) != GGUF_TYPE_ARRAY ||
        gguf_get_arr_type(vocab, kid_tokens) != GGUF_TYPE_STRING || gguf_get_arr_n(vocab, kid_tokens) == 0) {
        gm_err("'%s' has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens)", path);
        gguf_free(vocab);
        return NULL;
    }
    *n_vocab = (uint32_t) gguf_get_arr_n(vocab, kid_tokens);
    return vocab;
}

//
// rewrite: saved model -> final file
//

// how the bytes of one output tensor are gathered from the saved file:
// count blocks of len bytes, the first at src, each stride bytes after the previous
struct gm_copy {
    uint64_t src;
    uint64_t len;
    uint64_t stride;
    uint64_t count;
};

struct gm_stats {
    int64_t  n_tensors;
    int64_t  n_dropped;
    int64_t  n_split;
    uint64_t n_params;
    uint64_t n_params_expert;  // routed experts only, for the active-parameter estimate
    uint64_t file_size;
};

static bool gm_write_zeros(FILE * f, uint64_t n) {
    static const char zeros[64] = { 0 };
    while (n > 0) {
        const size_t nc = n < sizeof(zeros) ? (size_t) n : sizeof(zeros);
        if (fwrite(zeros, 1, nc, f) != nc) {
            return false;
        }
        n -= nc;
    }
    return true;
}

static bool gm_rewrite(const char * raw_path, const char * out_path, const struct gm_preset * p,
        const struct gguf_context * kv, bool has_vocab, uint64_t seed, struct gm_stats * st) {
    bool ok = false;
    struct ggml_context * meta_ctx = NULL;
    struct ggml_context * out_ctx  = NULL;
    struct gguf_context * raw      = NULL;
    struct gguf_context * out      = NULL;
    struct gm_copy      * plan     = NULL;
    void                * meta_buf = NULL;
    char                * buf      = NULL;
    FILE                * fin      = NULL;
    FILE                * fout     = NULL;

    memset(st, 0, sizeof(*st));

    struct gguf_init_params params = { /*.no_alloc =*/ true, /*.ctx =*/ &meta_ctx };
    raw = gguf_init_from_file(raw_path, params);
    if (!raw) {
        gm_err("llama_model_save_to_file() did not produce a readable GGUF ('%s')", raw_path);
        goto done;
    }
    const int64_t n_raw       = gguf_get_n_tensors(raw);
    const uint64_t raw_data   = gguf_get_data_offset(raw);

    // llama_model_save_to_file() returns nothing: a short write (disk full) only shows as a short file
    fin = fopen(raw_path, "rb");
    if (!fin || fseeko(fin, 0, SEEK_END) != 0) {
        gm_err("cannot read back '%s': %s", raw_path, strerror(errno));
        goto done;
    }
    {
        const uint64_t raw_size = (uint64_t) ftello(fin);
        uint64_t need = raw_data;
        for (int64_t i = 0; i < n_raw; i++) {
            const uint64_t end = raw_data + gguf_get_tensor_offset(raw, i) + gguf_get_tensor_size(raw, i);
            need = end > need ? end : need;
        }
        if (raw_size < need) {
            gm_err("saved model '%s' is truncated (%" PRIu64 " of %" PRIu64 " bytes): disk full?", raw_path, raw_size, need);
            goto done;
        }
    }

    // The KV pairs are the ones the model was created from, not the saver's: it writes every
    // hparam it knows (~130 keys, defaults included), while real checkpoints carry only the keys
    // of their arch. The model was built from exactly these keys, so they load the same model.
    out = gguf_init_empty();
    gguf_set_kv(out, kv);
    gguf_set_val_u32(out, "general.file_type", 0); // LLAMA_FTYPE_ALL_F32, as convert_hf_to_gguf.py writes
    {
        char desc[256];
        snprintf(desc, sizeof(desc), "random weights: gen-model --preset %s --seed %" PRIu64 " (%s)",
                p->name, seed, has_vocab ? "tokenizer from --vocab" : "test tokenizer");
        gguf_set_val_str(out, "general.description", desc);
    }

    {
        struct ggml_init_params ip = {
            /*.mem_size   =*/ ggml_tensor_overhead()*(size_t) (2*n_raw + 8),
            /*.mem_buffer =*/ NULL,
            /*.no_alloc   =*/ true,
        };
        out_ctx = ggml_init(ip);
    }
    plan = calloc((size_t) (2*n_raw + 1), sizeof(*plan));
    if (!out_ctx || !plan) {
        gm_err("out of memory");
        goto done;
    }

    int64_t n_out = 0;
    for (int64_t i = 0; i < n_raw; i++) {
        const char * name = gguf_get_tensor_name(raw, i);
        struct ggml_tensor * t = ggml_get_tensor(meta_ctx, name);
        const uint64_t src = raw_data + gguf_get_tensor_offset(raw, i);

        if (gm_tensor_dropped(p, name)) {
            st->n_dropped++;
            if (gm_verbosity > 0) {
                fprintf(stderr, "gen-model: drop %s\n", name);
            }
            continue;
        }

        if (gm_ends_with(name, ".ffn_gate_up_exps.weight")) {
            // fused [n_embd, 2*n_ff, n_expert]: rows [0, n_ff) of each expert are the gate, the rest
            // the up projection (see build_moe_ffn); written as the two separate default tensors
            const int64_t n_ff    = t->ne[1]/2;
            const uint64_t rows   = (uint64_t) n_ff*t->nb[1];
            const size_t   prefix = strlen(name) - strlen("ffn_gate_up_exps.weight");
            const char   * parts[2] = { "ffn_gate_exps.weight", "ffn_up_exps.weight" };
            for (int h = 0; h < 2; h++) {
                struct ggml_tensor * s = ggml_new_tensor_3d(out_ctx, t->type, t->ne[0], n_ff, t->ne[2]);
                char sname[GGML_MAX_NAME];
                snprintf(sname, sizeof(sname), "%.*s%s", (int) prefix, name, parts[h]);
                ggml_set_name(s, sname);
                gguf_add_tensor(out, s);
                plan[n_out++] = (struct gm_copy) { src + (uint64_t) h*rows, rows, (uint64_t) t->nb[2], (uint64_t) t->ne[2] };
                st->n_params        += (uint64_t) ggml_nelements(s);
                st->n_params_expert += (uint64_t) ggml_nelements(s);
            }
            st->n_split++;
            continue;
        }

        struct ggml_tensor * c = ggml_dup_tensor(out_ctx, t);
        ggml_set_name(c, name);
        gguf_add_tensor(out, c);
        plan[n_out++] = (struct gm_copy) { src, ggml_nbytes(t), 0, 1 };
        st->n_params += (uint64_t) ggml_nelements(t);
        if (strstr(name, "_exps.")) {
            st->n_params_expert += (uint64_t) ggml_nelements(t);
        }
    }
    st->n_tensors = n_out;

    fout = fopen(out_path, "wb");
    if (!fout) {
        gm_err("cannot create '%s': %s", out_path, strerror(errno));
        goto done;
    }

    const size_t meta_size = gguf_get_meta_size(out);
    meta_buf = malloc(meta_size);
    enum { BUF_SIZE = 64 << 20 };
    buf = malloc(BUF_SIZE);
    if (!meta_buf || !buf) {
        gm_err("out of memory");
        goto done;
    }
    gguf_get_meta_data(out, meta_buf);
    if (fwrite(meta_buf, 1, meta_size, fout) != meta_size) {
        goto write_error;
    }

    {
        // the meta block is padded to the alignment; the data section starts right after it
        // (gguf_get_data_offset() is only known for contexts read from a file)
        const uint64_t data_off  = meta_size;
        const uint64_t alignment = gguf_get_alignment(out);
        uint64_t pos = meta_size;
        for (int64_t i = 0; i < n_out; i++) {
            // gguf computed where each tensor goes; padding is zeros, as gguf_write_to_file() does
            const uint64_t at = data_off + gguf_get_tensor_offset(out, i);
            if (at < pos || !gm_write_zeros(fout, at - pos)) {
                goto write_error;
            }
            pos = at;
            const struct gm_copy * c = &plan[i];
            for (uint64_t b = 0; b < c->count; b++) {
                if (fseeko(fin, (off_t) (c->src + b*c->stride), SEEK_SET) != 0) {
                    goto read_error;
                }
                for (uint64_t done_b = 0; done_b < c->len; ) {
                    const size_t nc = c->len - done_b < BUF_SIZE ? (size_t) (c->len - done_b) : BUF_SIZE;
                    if (fread(buf, 1, nc, fin) != nc) {
                        goto read_error;
                    }
                    if (fwrite(buf, 1, nc, fout) != nc) {
                        goto write_error;
                    }
                    done_b += nc;
                }
                pos += c->len;
            }
            if (c->count*c->len != gguf_get_tensor_size(out, i)) {
                gm_err("internal error: size mismatch for tensor '%s'", gguf_get_tensor_name(out, i));
                goto done;
            }
        }
        const uint64_t end = (pos + alignment - 1)/alignment*alignment;
        if (!gm_write_zeros(fout, end - pos)) {
            goto write_error;
        }
        st->file_size = end;
    }

    if (fflush(fout) != 0 || ferror(fout)) {
        goto write_error;
    }
    {
        FILE * f = fout;
        fout = NULL;
        if (fclose(f) != 0) {
            goto write_error;
        }
    }
    ok = true;
    goto done;

read_error:
    gm_err("cannot read '%s'", raw_path);
    goto done;
write_error:
    gm_err("cannot write '%s': %s", out_path, strerror(errno));
    goto done;

done:
    if (fout) {
        fclose(fout);
    }
    if (fin) {
        fclose(fin);
    }
    free(buf);
    free(meta_buf);
    free(plan);
    if (out) {
        gguf_free(out);
    }
    if (out_ctx) {
        ggml_free(out_ctx);
    }
    if (raw) {
        gguf_free(raw);
    }
    if (meta_ctx) {
        ggml_free(meta_ctx);
    }
    return ok;
}

//
// main
//

static void gm_usage(FILE * f) {
    fprintf(f,
        "usage: gen-model --preset NAME [--seed N] [--vocab PATH.gguf] -o OUT.gguf\n"
        "       gen-model --list\n"
        "\n"
        "Writes a deterministic random-weight F32 model: the same preset, seed and vocab file\n"
        "always give a byte-identical OUT.gguf.\n"
        "\n"
        "  --preset NAME   model shape (see --list)\n"
        "  --seed N        weight seed, unsigned 64-bit integer (default 1)\n"
        "  --vocab PATH    vocab-only GGUF whose tokenizer.* keys are copied (bench presets;\n"
        "                  without it they fall back to the test tokenizer)\n"
        "  -o OUT.gguf     output file (written to OUT.gguf.tmp, then renamed)\n"
        "  --list          list the presets\n"
        "  -v              show llama.cpp's log\n");
}

static void gm_list(void) {
    for (size_t i = 0; i < GM_N_PRESETS; i++) {
        printf("%-16s %s\n", gm_presets[i].name, gm_presets[i].desc);
    }
}

static bool gm_parse_seed(const char * s, uint64_t * seed) {
    if (*s < '0' || *s > '9') {
        return false; // strtoull would accept a sign or leading blanks
    }
    char * end = NULL;
    errno = 0;
    const unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0') {
        return false;
    }
    *seed = (uint64_t) v;
    return true;
}

int main(int argc, char ** argv) {
    const char * preset_name = NULL;
    const char * vocab_path  = NULL;
    const char * out_path    = NULL;
    uint64_t     seed        = 1;
    bool         list        = false;

    for (int i = 1; i < argc; i++) {
        const char * arg = argv[i];
        const bool has_val = i + 1 < argc;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            gm_usage(stdout);
            return 0;
        } else if (strcmp(arg, "--list") == 0) {
            list = true;
        } else if (strcmp(arg, "-v") == 0) {
            gm_verbosity = 1;
        } else if (strcmp(arg, "--preset") == 0 && has_val) {
            preset_name = argv[++i];
        } else if (strcmp(arg, "--vocab") == 0 && has_val) {
            vocab_path = argv[++i];
        } else if (strcmp(arg, "-o") == 0 && has_val) {
            out_path = argv[++i];
        } else if (strcmp(arg, "--seed") == 0 && has_val) {
            if (!gm_parse_seed(argv[++i], &seed)) {
                gm_err("invalid seed '%s': expected an unsigned 64-bit decimal integer", argv[i]);
                return 1;
            }
        } else if (strcmp(arg, "--preset") == 0 || strcmp(arg, "--vocab") == 0 ||
                   strcmp(arg, "-o") == 0 || strcmp(arg, "--seed") == 0) {
            gm_err("%s needs a value", arg);
            return 1;
        } else {
            gm_err("unknown argument '%s'", arg);
            gm_usage(stderr);
            return 1;
        }
    }

    if (list) {
        gm_list();
        return 0;
    }
    if (!preset_name) {
        gm_err("missing --preset (see --list)");
        return 1;
    }
    const struct gm_preset * p = gm_find_preset(preset_name);
    if (!p) {
        gm_err("unknown preset '%s'; available presets:", preset_name);
        for (size_t i = 0; i < GM_N_PRESETS; i++) {
            fprintf(stderr, "  %s\n", gm_presets[i].name);
        }
        return 1;
    }
    if (!out_path || *out_path == '\0') {
        gm_err("missing -o OUT.gguf");
        return 1;
    }
    if (vocab_path && !p->bench) {
        gm_err("--vocab is for bench presets; %s uses the test tokenizer", p->name);
        return 1;
    }

    // temporaries next to the output, so the final rename stays on one file system
    const size_t n_path = strlen(out_path) + 16;
    char * tmp_path = malloc(n_path);
    char * raw_path = malloc(n_path);
    snprintf(tmp_path, n_path, "%s.tmp", out_path);
    snprintf(raw_path, n_path, "%s.raw.tmp", out_path);

    // fail before minutes of work if the output directory is not writable
    {
        FILE * f = fopen(tmp_path, "wb");
        if (!f) {
            gm_err("cannot create '%s': %s", tmp_path, strerror(errno));
            free(tmp_path);
            free(raw_path);
            return 1;
        }
        fclose(f);
        remove(tmp_path);
    }

    struct gguf_context * vocab = NULL;
    uint32_t n_vocab = p->n_vocab;
    if (p->bench) {
        if (vocab_path) {
            vocab = gm_load_vocab(vocab_path, &n_vocab);
            if (!vocab) {
                free(tmp_path);
                free(raw_path);
                return 1;
            }
        } else {
            n_vocab = GM_TEST_VOCAB_BENCH;
            fprintf(stderr, "gen-model: warning: %s without --vocab: falling back to the test tokenizer "
                    "(%" PRIu32 " tokens) instead of the real Qwen3.5 one\n", p->name, n_vocab);
        }
    }

    int rc = 1;
    struct llama_model * model = NULL;
    struct gguf_context * meta = NULL;

    llama_log_set(gm_log_cb, NULL);
    llama_backend_init();

    meta = gm_build_metadata(p, vocab, n_vocab);

    struct llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers      = 0;     // the weights only pass through host memory
    mparams.use_extra_bufts   = false; // no repacked layouts: the saver must see plain F32 rows
    mparams.progress_callback = gm_silent_progress;

    struct gm_fill_ctx fc = { .preset = p, .seed = seed };

    fprintf(stderr, "gen-model: %s (%s), seed %" PRIu64 ", vocab %" PRIu32 " (%s)\n",
            p->name, p->arch, seed, n_vocab, vocab ? vocab_path : "test tokenizer");

    model = llama_model_init_from_user(meta, gm_fill_tensor, &fc, mparams);
    if (!model) {
        gm_err("llama_model_init_from_user() failed for preset %s", p->name);
        goto done;
    }
    if (fc.failed) {
        gm_err("tensor '%s' was not created as F32", fc.failed_name);
        goto done;
    }

    llama_model_save_to_file(model, raw_path);
    llama_model_free(model);
    model = NULL;

    struct gm_stats st;
    if (!gm_rewrite(raw_path, tmp_path, p, meta, vocab != NULL, seed, &st)) {
        goto done;
    }
    remove(raw_path);
    if (rename(tmp_path, out_path) != 0) {
        gm_err("cannot rename '%s' to '%s': %s", tmp_path, out_path, strerror(errno));
        goto done;
    }

    {
        // active = everything but the routed experts, plus the used share of them
        const double active = p->n_expert > 0
            ? (double) (st.n_params - st.n_params_expert) + (double) st.n_params_expert*p->n_expert_used/p->n_expert
            : (double) st.n_params;
        fprintf(stderr, "gen-model: wrote %s: %" PRId64 " tensors (%" PRId64 " optional dropped, %" PRId64 " fused split), "
                "%.3f M params (%.3f M active), %.1f MiB\n",
                out_path, st.n_tensors, st.n_dropped, st.n_split,
                st.n_params/1e6, active/1e6, st.file_size/1024.0/1024.0);
    }
    rc = 0;

done:
    if (model) {
        llama_model_free(model);
    }
    if (meta) {
        gguf_free(meta);
    }
    if (vocab) {
        gguf_free(vocab);
    }
    if (rc != 0) {
        remove(raw_path);
        remove(tmp_path);
    }
    free(tmp_path);
    free(raw_path);
    llama_backend_free();
    return rc;
}
