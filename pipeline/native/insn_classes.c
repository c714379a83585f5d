/*
 * A qemu-user TCG plugin of our own: counts the guest instructions executed, by class, and per translated block
 * (so the host can attribute them to functions). Built by pipeline/estimate_counts.py on first use with the host's
 * C compiler; loaded as `qemu-aarch64 -plugin libinsn_classes.so,out=FILE`.
 *
 * Debian packages no qemu plugin header, so the few functions of qemu's documented plugin API (version 1, the
 * one qemu 7.2 speaks: docs/devel/tcg-plugins.rst, include/qemu/qemu-plugin.h) are declared here.
 *
 * Classes are decided once per instruction at translation time (encoding and qemu's disassembly), and each
 * translated block adds its per-class totals inline every time it runs, so counting costs little. At exit the
 * plugin writes: "total <class> <n>" lines, then "tb <vaddr> <executions> <insns>" for every block that ran.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -- the plugin API, as qemu documents it (API version 1) -------------------------------------------------- */
typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t {
    const char *target_name;
    struct { int min; int cur; } version;
    bool system_emulation;
    union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
char *qemu_plugin_insn_disas(const struct qemu_plugin_insn *insn);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);

#define EXPORT __attribute__((visibility("default")))
EXPORT int qemu_plugin_version = 1;

/* -- classes ---------------------------------------------------------------------------------------------- */
enum { DOT, SIMD_MAC, SIMD_OTHER, LOAD_STORE, BRANCH, SCALAR, N_CLASSES };
static const char *NAMES[N_CLASSES] = {"dot", "simd_mac", "simd_other", "load_store", "branch", "scalar"};

static bool in(const char *word, const char *const *list) {
    for (; *list; list++)
        if (strcmp(word, *list) == 0) return true;
    return false;
}

static bool starts(const char *word, const char *prefix) { return strncmp(word, prefix, strlen(prefix)) == 0; }

/* aarch64: the group from the encoding (A64's top-level decode, bits 28:25), the multiply-accumulates among
 * SIMD & FP instructions from qemu's disassembly, and the dot products from their encodings (qemu 7.2's
 * disassembler prints those as .byte) */
static bool is_dot(uint32_t w) {
    return (w & 0x9FE0FC00u) == 0x0E809400u     /* SDOT/UDOT (vector) */
        || (w & 0x9FC0F400u) == 0x0F80E000u     /* SDOT/UDOT (by element) */
        || (w & 0xBFE0FC00u) == 0x0E809C00u     /* USDOT (vector) */
        || (w & 0xBF40F400u) == 0x0F00F000u;    /* SUDOT/USDOT (by element) */
}

static int classify_a64(uint32_t w, const char *op, const char *args) {
    static const char *const mac[] = {"fmla", "fmls", "mla", "mls", "smlal", "smlal2", "umlal", "umlal2",
                                      "smlsl", "smlsl2", "umlsl", "umlsl2", "sadalp", "uadalp", "smmla", "ummla",
                                      "usmmla", "fmlal", "fmlal2", "bfmmla", "bfdot", NULL};
    unsigned op0 = (w >> 25) & 0xF;
    if (is_dot(w)) return DOT;
    if ((op0 & 0x5) == 0x4) return LOAD_STORE;           /* x1x0 */
    if ((op0 & 0xE) == 0xA) return BRANCH;               /* 101x: branches, exceptions, system */
    if ((op0 & 0x7) == 0x7) {                             /* x111: SIMD and floating point */
        bool vector = strstr(args, ".16b") || strstr(args, ".8h") || strstr(args, ".4s") || strstr(args, ".2d") ||
                      strstr(args, ".8b") || strstr(args, ".4h") || strstr(args, ".2s");
        return vector && in(op, mac) ? SIMD_MAC : SIMD_OTHER;
    }
    return SCALAR;                                        /* data processing, immediate and register */
}

/* x86-64, from the mnemonic and its operands (qemu prints AT&T syntax: %xmm, %ymm registers) */
static int classify_x86(const char *op, const char *args) {
    bool vector = strstr(args, "%xmm") || strstr(args, "%ymm") || strstr(args, "%zmm");
    if (starts(op, "vpdpbusd") || starts(op, "vpdpwssd")) return DOT;
    if (starts(op, "vfmadd") || starts(op, "vfnmadd") || starts(op, "vfmsub") || starts(op, "vfnmsub") ||
        starts(op, "vpmaddubsw") || starts(op, "vpmaddwd") || starts(op, "pmaddubsw") || starts(op, "pmaddwd"))
        return SIMD_MAC;
    if (op[0] == 'j' || starts(op, "call") || starts(op, "ret")) return BRANCH;
    bool memory = strchr(args, '(') != NULL && !starts(op, "lea") && !starts(op, "nop");
    if (vector) return memory && (starts(op, "vmov") || starts(op, "mov")) ? LOAD_STORE : SIMD_OTHER;
    if (memory || starts(op, "push") || starts(op, "pop")) return LOAD_STORE;   /* a scalar op that touches memory */
    return SCALAR;
}

/* -- per-block records -------------------------------------------------------------------------------------- */
typedef struct Block {
    uint64_t vaddr, insns, executions;
    struct Block *next;
} Block;

static Block *blocks;
static uint64_t totals[N_CLASSES];
static bool x86;
static char out_path[4096];

static int classify(const struct qemu_plugin_insn *insn, const char *text) {
    char op[64] = {0};
    const char *p = text;
    size_t n = 0;
    while (*p == ' ' || *p == '\t') p++;
    while (p[n] && p[n] != ' ' && p[n] != '\t' && n < sizeof(op) - 1) { op[n] = p[n]; n++; }
    const char *args = p + n;
    if (x86) return classify_x86(op, args);
    uint32_t word;
    memcpy(&word, qemu_plugin_insn_data(insn), sizeof word);      /* A64: one little-endian 32-bit word */
    return classify_a64(word, op, args);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    uint64_t per_class[N_CLASSES] = {0};
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        char *text = qemu_plugin_insn_disas(insn);
        per_class[classify(insn, text ? text : "")]++;
        free(text);
    }
    for (int c = 0; c < N_CLASSES; c++)
        if (per_class[c]) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &totals[c],
                                                                   per_class[c]);
    Block *b = calloc(1, sizeof *b);      /* never freed: read at exit */
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->insns = n;
    b->next = blocks;
    blocks = b;
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &b->executions, 1);
    (void)id;
}

static void write_counts(qemu_plugin_id_t id, void *userdata) {
    FILE *f = fopen(out_path, "w");
    if (!f) return;
    for (int c = 0; c < N_CLASSES; c++) fprintf(f, "total %s %" PRIu64 "\n", NAMES[c], totals[c]);
    for (Block *b = blocks; b; b = b->next)
        if (b->executions) fprintf(f, "tb %" PRIx64 " %" PRIu64 " %" PRIu64 "\n", b->vaddr, b->executions, b->insns);
    fclose(f);
    (void)id, (void)userdata;
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    for (int i = 0; i < argc; i++)
        if (strncmp(argv[i], "out=", 4) == 0) snprintf(out_path, sizeof out_path, "%s", argv[i] + 4);
    if (!out_path[0]) {
        fprintf(stderr, "insn_classes: give out=FILE\n");
        return 1;
    }
    x86 = strcmp(info->target_name, "x86_64") == 0;
    if (!x86 && strcmp(info->target_name, "aarch64") != 0) {
        fprintf(stderr, "insn_classes: aarch64 and x86_64 guests only, not %s\n", info->target_name);
        return 1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, write_counts, NULL);
    return 0;
}
