/* Bare-metal runner for tests/support/x86_emulation.py: calls TVM-compiled functions (object files, TVM's FFI calling
 * convention: DLTensor arguments) on an emulated x86 CPU with no operating system and no TVM runtime, and says
 * for each whether its output equals the expected one, byte for byte. Calls whose instruction sets the CPU does
 * not report (CPUID) are skipped. Output on COM1 (8N1), a line before and after each call, then RESULT; then it asks Bochs to
 * power off. The calls come from the generated calls.h, their operands' bytes from data.S. Freestanding: our own memset/memcpy, a bump allocator
 * for TVM's workspaces, parallel loops run as one task. */
#include <stddef.h>
#include <stdint.h>
#include <tvm/ffi/c_api.h>

typedef int (*tvm_fn)(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);
typedef struct { void *data; int32_t ndim; uint8_t code, bits; const int64_t *shape; } arg_t;
typedef struct { const char *name; tvm_fn fn; uint32_t needs; int32_t nargs; arg_t args[8]; const void *expected; } call_t;
#define NEEDS_AVX2 1u
#define NEEDS_AVX512_VNNI 2u          /* AVX512F + BW + VL + VNNI */
#define NEEDS_AVX_VNNI 4u
#include "calls.h"

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
#define COM1 0x3F8
static void serial_init(void) {
  outb(COM1 + 1, 0x00);                          /* no interrupts */
  outb(COM1 + 3, 0x80); outb(COM1 + 0, 0x01); outb(COM1 + 1, 0x00);     /* 115200 baud */
  outb(COM1 + 3, 0x03);                          /* 8 bits, no parity, 1 stop bit */
}
static void put(char c) { while (!(inb(COM1 + 5) & 0x20)) {} outb(COM1, (uint8_t)c); }
static void drain(void) { while (!(inb(COM1 + 5) & 0x40)) {} }     /* the transmitter empty: all sent */
static void say(const char *s) { while (*s) put(*s++); }
static void num(int64_t v) {
  char b[24]; int i = 0; uint64_t u = v < 0 ? (uint64_t)-v : (uint64_t)v;
  if (v < 0) put('-');
  do b[i++] = (char)('0' + u % 10); while (u /= 10);
  while (i) put(b[--i]);
}

void *memset(void *d, int c, size_t n) { uint8_t *p = d; while (n--) *p++ = (uint8_t)c; return d; }
void *memcpy(void *d, const void *s, size_t n) { uint8_t *p = d; const uint8_t *q = s; while (n--) *p++ = *q++; return d; }
void *memmove(void *d, const void *s, size_t n) {
  uint8_t *p = d; const uint8_t *q = s;
  if (p < q) while (n--) *p++ = *q++; else { p += n; q += n; while (n--) *--p = *--q; }
  return d;
}

static uint8_t heap[64 << 20] __attribute__((aligned(64)));
static size_t heap_used;
typedef struct { void *sync_handle; int32_t num_task; } parallel_env_t;
static int parallel_launch(int (*body)(int, parallel_env_t *, void *), void *closure, int num_task) {
  (void)num_task; parallel_env_t env = {0, 1}; return body(0, &env, closure);
}
static void *alloc_workspace(int device_type, int device_id, uint64_t size, int code, int bits) {
  (void)device_type; (void)device_id; (void)code; (void)bits;
  size_t at = (heap_used + 63) & ~(size_t)63;
  if (at + size > sizeof heap) return 0;
  heap_used = at + size;
  return heap + at;
}
static int free_workspace(int device_type, int device_id, void *ptr) { (void)device_type; (void)device_id; (void)ptr; return 0; }
/* the TVM runtime's loader sets these in every library it opens; here we do */
extern void *__TVMBackendParallelLaunch, *__TVMBackendAllocWorkspace, *__TVMBackendFreeWorkspace;

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t n) {
  say("  error "); say(kind); say(":");
  for (int32_t i = 0; i < n; i++) if (parts[i]) { put(' '); say(parts[i]); }
  put('\n');
}

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static uint32_t cpu_has(void) {
  uint32_t l7[4], l71[4], has = 0;
  cpuid(7, 0, l7); cpuid(7, 1, l71);
  if (l7[1] & (1u << 5)) has |= NEEDS_AVX2;
  if ((l7[1] & (1u << 16)) && (l7[1] & (1u << 30)) && (l7[1] & (1u << 31)) && (l7[2] & (1u << 11))) has |= NEEDS_AVX512_VNNI;
  if (l71[0] & (1u << 4)) has |= NEEDS_AVX_VNNI;
  return has;
}

void runner_main(void) {
  serial_init();
  __TVMBackendParallelLaunch = (void *)parallel_launch;
  __TVMBackendAllocWorkspace = (void *)alloc_workspace;
  __TVMBackendFreeWorkspace = (void *)free_workspace;
  uint32_t r[4]; char brand[49];
  for (uint32_t i = 0; i < 3; i++) { cpuid(0x80000002u + i, 0, r); memcpy(brand + 16 * i, r, 16); }
  brand[48] = 0;
  uint32_t has = cpu_has();
  say("CPU "); say(brand); say(" | avx2 "); num(!!(has & NEEDS_AVX2)); say(" avx512-vnni "); num(!!(has & NEEDS_AVX512_VNNI));
  say(" avx-vnni "); num(!!(has & NEEDS_AVX_VNNI)); put('\n');
  int32_t ran = 0, differ = 0, skipped = 0;
  for (size_t c = 0; c < sizeof CALLS / sizeof CALLS[0]; c++) {
    const call_t *k = &CALLS[c];
    if ((has & k->needs) != k->needs) { say("SKIP "); say(k->name); put('\n'); skipped++; continue; }
    DLTensor t[8]; TVMFFIAny a[8];
    for (int32_t i = 0; i < k->nargs; i++) {
      const arg_t *g = &k->args[i];
      memset(&t[i], 0, sizeof t[i]);
      t[i].data = g->data; t[i].device.device_type = kDLCPU; t[i].ndim = g->ndim;
      t[i].dtype.code = g->code; t[i].dtype.bits = g->bits; t[i].dtype.lanes = 1;
      t[i].shape = (int64_t *)g->shape;
      memset(&a[i], 0, sizeof a[i]); a[i].type_index = kTVMFFIDLTensorPtr; a[i].v_ptr = &t[i];
    }
    const arg_t *out = &k->args[k->nargs - 1];
    size_t bytes = out->bits / 8u;
    for (int32_t d = 0; d < out->ndim; d++) bytes *= (size_t)out->shape[d];
    memset(out->data, 0x55, bytes);
    say("CALL "); say(k->name); put('\n'); drain();   /* a fault in the call stops the machine: this names it */
    int rc = k->fn(0, a, k->nargs, 0);
    size_t bad = 0;
    for (size_t i = 0; i < bytes; i++) bad += ((const uint8_t *)out->data)[i] != ((const uint8_t *)k->expected)[i];
    say(rc == 0 && bad == 0 ? "SAME " : "DIFFERS "); say(k->name); say(" "); num((int64_t)bad); say("/"); num((int64_t)bytes);
    say(" rc "); num(rc); put('\n');
    ran++; differ += rc != 0 || bad != 0;
  }
  say("RESULT ran "); num(ran); say(" differ "); num(differ); say(" skipped "); num(skipped); put('\n');
  drain();
  for (const char *s = "Shutdown"; *s; s++) outb(0x8900, (uint8_t)*s);   /* Bochs' power-off port */
}
