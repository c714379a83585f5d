/* The clock a core runs at while busy, in GHz: a chain of dependent integer adds, one cycle each on every x86-64
 * core since the Pentium Pro (register operands: Golden Cove folds small immediate adds at rename, which ran
 * such a chain at 20 "GHz"), timed with the monotonic clock. The best of several passes (turbo settles).
 * Used by `make estimate` on x86 to turn measured milliseconds into cycles. */
#include <stdio.h>
#include <time.h>

#define ADD8 "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t" \
             "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
    const long iterations = 25000000;          /* 64 adds each: 1.6e9 cycles, about half a second at 3 GHz */
    double best = 0.0;
    unsigned long x = 0, step = 1;
    for (int pass = 0; pass < 5; pass++) {
        double start = seconds();
        for (long i = 0; i < iterations; i++)
            __asm__ volatile(ADD8 ADD8 ADD8 ADD8 ADD8 ADD8 ADD8 ADD8 : "+r"(x) : "r"(step));
        double ghz = 64.0 * (double)iterations / (seconds() - start) / 1e9;
        if (ghz > best) best = ghz;
    }
    printf("%.4f %lu\n", best, x);
    return 0;
}
