/* A GNU make plugin that lets `make <verb>` exit with the program's own exit code.
 *
 * GNU make exits 2 whenever a recipe fails, whatever the recipe's code: a CI could not tell "gate
 * failed" (1) from "bad input" (2). The Makefile runs each verb's program in a prerequisite whose
 * shell writes the program's code to a file and always succeeds; the verb's own recipe, which make
 * expands only after the prerequisite has run, calls $(xc-exit FILE): this function reads the code,
 * removes the file and, when the code is not 0, ends make with it.
 *
 * Built by the Makefile itself (`-load`); where it cannot be built (no C compiler, a make without
 * `load`), the Makefile falls back to plain recipes and make's own exit code 2.
 * make loads only plugins that declare `plugin_is_GPL_compatible`; this file is ours and stands alone. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <gnumake.h>

int plugin_is_GPL_compatible;

static char *xc_exit(const char *name, unsigned int argc, char **argv)
{
    (void)name;
    (void)argc;
    FILE *f = fopen(argv[0], "r");
    if (f == NULL)              /* the program did not run (make -n, or an earlier prerequisite failed) */
        return NULL;
    int code = 0;
    int read = fscanf(f, "%d", &code);
    fclose(f);
    unlink(argv[0]);
    if (read != 1) {
        fprintf(stderr, "make: the exit code file %s was unreadable\n", argv[0]);
        exit(2);
    }
    if (code != 0) {
        fflush(stdout);
        exit(code & 255);
    }
    return NULL;
}

int xc_exit_gmk_setup(void)
{
    gmk_add_function("xc-exit", xc_exit, 1, 1, GMK_FUNC_DEFAULT);
    return 1;
}
