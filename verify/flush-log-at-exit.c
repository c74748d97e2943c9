// LD_PRELOAD shim for the harness: a llama.cpp tool's log worker is joined at exit,
// so the tool's last lines (rows, perf figures) are written before the process ends.
//
// common_log leaks its worker thread at exit (upstream issue 22142): a tool whose
// main returns before the worker ran loses the end of its output, most of the time
// for the tiny gate models on a loaded machine. common_init() is interposed to
// register the join with atexit: registered after the library's static objects were
// built, it runs before they are destroyed. Timing is unchanged up to the exit.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>

// C++ names of void common_init(), common_log * common_log_main(), void common_log_pause(common_log *)
#define COMMON_INIT      "_Z11common_initv"
#define COMMON_LOG_MAIN  "_Z15common_log_mainv"
#define COMMON_LOG_PAUSE "_Z16common_log_pauseP10common_log"

static void join_log_worker(void) {
    void * (*log_main)(void)   = (void * (*)(void)) dlsym(RTLD_DEFAULT, COMMON_LOG_MAIN);
    void   (*log_pause)(void *) = (void (*)(void *)) dlsym(RTLD_DEFAULT, COMMON_LOG_PAUSE);
    if (log_main && log_pause) {
        log_pause(log_main()); // pushes an end entry and joins the worker once it wrote the rest
    }
}

void _Z11common_initv(void) {
    void (*real_common_init)(void) = (void (*)(void)) dlsym(RTLD_NEXT, COMMON_INIT);
    if (real_common_init) {
        real_common_init();
    }
    atexit(join_log_worker);
}
