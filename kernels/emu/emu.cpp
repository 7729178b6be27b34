// The CUDA emulator's runtime: fibers, the per-block scheduler, a pool of worker threads,
// guarded allocations, and the C entry points src/runtime/cuda/emu.rs calls. Compiled by the
// host C++ compiler at run time together with every kernels/*.cu (one translation unit).
#include "emu.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "norm.cu"
#include "rope.cu"
#include "attention.cu"
#include "gemv.cu"
#include "gemm.cu"
#include "sample.cu"

namespace emu {

thread_local Block* g_block = nullptr;
thread_local Fiber* g_fiber = nullptr;

// ---- context switching ----
#if defined(__x86_64__)
// Saves callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save, and resumes the context whose stack pointer is `to`.
extern "C" void qf_emu_switch(void** save, void* to);
asm(R"(
    .text
    .p2align 4
    .globl qf_emu_switch
    .hidden qf_emu_switch
    .type qf_emu_switch,@function
qf_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size qf_emu_switch,.-qf_emu_switch
)");

static void fiber_entry();

// A fresh context on the stack ending at `top` that starts in fiber_entry.
static void* fresh_context(unsigned char* top) {
    uint64_t* sp = (uint64_t*)((uintptr_t)top & ~(uintptr_t)15);
    *--sp = 0;                            // fiber_entry's return address (it never returns)
    *--sp = (uint64_t)(void*)&fiber_entry;  // where `ret` goes
    for (int i = 0; i < 6; i++) *--sp = 0;  // rbp rbx r12-r15
    uint32_t csr[2] = {0, 0};
    asm volatile("stmxcsr %0" : "=m"(csr[0]));
    asm volatile("fnstcw %0" : "=m"(*(uint16_t*)&csr[1]));
    std::memcpy(--sp, csr, 8);
    return sp;
}
#else
#error "the CUDA emulator's context switch is written for x86-64 only"
#endif

static thread_local std::string* g_error = nullptr;  // the running block's error, if any

void yield() { qf_emu_switch(&g_fiber->sp, g_block->sched_sp); }

void fail(const char* msg) {
    if (g_error->empty()) {
        char where[160];
        std::snprintf(where, sizeof where, " (block %u,%u thread %u)", g_block->bid.x,
                      g_block->bid.y, g_fiber->tid.x);
        *g_error = std::string(msg) + where;
    }
    g_fiber->st = DONE;
    yield();
    __builtin_unreachable();
}

void* dyn_smem() { return g_block->dyn_smem; }

// ---- kernels: argument kinds (as src/runtime/cuda/gpu.rs's `Arg`) and calls ----
enum Kind : int { K_U64 = 0, K_I32 = 1, K_U32 = 2, K_F32 = 3 };

template <class T>
constexpr int kind_of() {
    return std::is_pointer<T>::value || std::is_same<T, u64>::value ? K_U64
           : std::is_same<T, int>::value                            ? K_I32
           : std::is_same<T, unsigned>::value                       ? K_U32
           : std::is_same<T, float>::value                          ? K_F32
                                                                    : -1;
}

template <class T>
T arg_as(uint64_t v) {
    T t;
    std::memcpy(&t, &v, sizeof(T));  // little endian: 4-byte values sit in the low bytes
    return t;
}

struct Entry {
    const char* name;
    int nargs;
    const int* kinds;
    void (*call)(void* fn, const uint64_t* args);
    void* fn;
};

template <class... A, size_t... I>
void call_with(void (*f)(A...), const uint64_t* a, std::index_sequence<I...>) {
    f(arg_as<A>(a[I])...);
}

template <class... A>
Entry entry(const char* name, void (*f)(A...)) {
    static const int kinds[sizeof...(A) + 1] = {kind_of<A>()..., 0};
    auto call = [](void* fn, const uint64_t* a) {
        call_with((void (*)(A...))fn, a, std::index_sequence_for<A...>{});
    };
    return Entry{name, (int)sizeof...(A), kinds, call, (void*)f};
}

#define KERNEL(f) entry(#f, f)
static const Entry KERNELS[] = {
    KERNEL(embed_gather),     KERNEL(add_rmsnorm), KERNEL(silu_mul),          KERNEL(quant_rows),
    KERNEL(scale_epilogue),   KERNEL(rope_qkv),    KERNEL(attention),         KERNEL(attention_combine),
    KERNEL(gemv_fp8),         KERNEL(gemv_bf16),   KERNEL(gemv_int8),   KERNEL(argmax_rows),       KERNEL(fill_fp8_normal),
    KERNEL(fill_bf16_normal), KERNEL(fill_f32),    KERNEL(fp8_probe),         KERNEL(top_k_rows),
    KERNEL(attention_mma_64), KERNEL(attention_mma_128), KERNEL(attention_mma_256),
    KERNEL(quant_groups),     KERNEL(gemm_fp8),    KERNEL(gemm_int8),         KERNEL(gemm_fp8_block),
#ifndef GEMV_SWEEP  // a sweep build has only gemv.cu's dense and W8A8 kernels
    KERNEL(gemv_int4g),       KERNEL(gemv_int8g),  KERNEL(gemv_fp4g),          KERNEL(dequant_int4g),
    KERNEL(dequant_int8g),    KERNEL(dequant_fp4g), KERNEL(gemv_fp8_block),    KERNEL(gemv_int4h),
    KERNEL(dequant_int4h),
#endif
};

static const Entry* find(const char* name) {
    for (const Entry& e : KERNELS)
        if (std::strcmp(e.name, name) == 0) return &e;
    return nullptr;
}

// ---- one block on one worker ----
struct Job {
    const Entry* e;
    std::vector<uint64_t> args;
    dim3u grid, block;
    unsigned smem;
    std::atomic<uint64_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex m;
    std::string error;
};

static thread_local Job* g_job = nullptr;

// QFORGE_EMU_REVERSE=1 runs a block's threads last to first between barriers: a kernel whose
// result depends on that order reads shared data some other thread has not written yet (a
// missing barrier), which the two orders expose from both sides.
static const bool g_reverse = [] {
    const char* s = std::getenv("QFORGE_EMU_REVERSE");
    return s && *s && std::strcmp(s, "0") != 0;
}();

static void fiber_entry() {
    g_job->e->call(g_job->e->fn, g_job->args.data());
    // Under a programmatic launch a kernel that never waits races its predecessor.
    if (!g_fiber->dep_waited) fail("the kernel returned without calling grid_dep_wait()");
    g_fiber->st = DONE;
    yield();
    __builtin_unreachable();
}

constexpr size_t STACK = 64 << 10, PAGE = 4096;

struct Worker {
    std::vector<Fiber> fibers = std::vector<Fiber>(1024);
    std::vector<unsigned char*> stacks = std::vector<unsigned char*>(1024, nullptr);
    std::vector<unsigned char> smem;
    Block* block = new Block();

    // Top of fiber t's stack (64 KiB above a guard page), mapped on first use.
    unsigned char* stack_top(int t) {
        if (!stacks[t]) {
            void* p = mmap(nullptr, STACK + PAGE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (p == MAP_FAILED) return nullptr;
            mprotect(p, PAGE, PROT_NONE);
            stacks[t] = (unsigned char*)p + PAGE + STACK;
        }
        return stacks[t];
    }

    // Runs block `bid` of the job; returns false (with `err` set) on a kernel error.
    bool run_block(Job& job, dim3u bid, std::string& err) {
        Block& b = *block;
        b.bid = bid;
        b.bdim = job.block;
        b.gdim = job.grid;
        b.nthreads = (int)(job.block.x * job.block.y * job.block.z);
        b.fibers = fibers.data();
        if (smem.size() < job.smem) smem.resize(job.smem);
        std::memset(smem.data(), 0xff, job.smem);  // NaN-filled: uninitialised reads show
        b.dyn_smem = smem.data();
        for (int t = 0; t < b.nthreads; t++) {
            Fiber& f = fibers[t];
            unsigned char* top = stack_top(t);
            if (!top) {
                err = "cannot map fiber stacks";
                return false;
            }
            f.sp = fresh_context(top);
            f.st = RUN;
            f.tid = {t % job.block.x, (t / job.block.x) % job.block.y,
                     t / (job.block.x * job.block.y)};
            f.lane = t & 31;
            f.warp = t >> 5;
            f.seq = 0;
            f.dep_waited = false;
        }
        g_block = &b;
        g_error = &err;
        g_job = &job;
        for (;;) {
            for (int i = 0; i < b.nthreads; i++) {
                const int t = g_reverse ? b.nthreads - 1 - i : i;
                if (fibers[t].st != RUN) continue;
                g_fiber = &fibers[t];
                qf_emu_switch(&b.sched_sp, fibers[t].sp);
                if (!err.empty()) return false;
            }
            if (!release(b, err)) return err.empty();
        }
    }

    // After a pass (no fiber runnable): releases complete warp collectives, else a complete
    // block barrier. Returns false when every fiber is done or on an error.
    bool release(Block& b, std::string& err) {
        bool any = false;
        int live = 0, at_block = 0;
        for (int w = 0; w * 32 < b.nthreads; w++) {
            int lanes = 0, at_warp = 0;
            unsigned seq = 0;
            for (int t = w * 32; t < b.nthreads && t < w * 32 + 32; t++) {
                lanes++;
                live += fibers[t].st != DONE;
                at_block += fibers[t].st == AT_BLOCK;
                if (fibers[t].st == AT_WARP) {
                    if (at_warp++ && fibers[t].seq != seq) {
                        err = "warp " + std::to_string(w) + ": lanes at different shuffles";
                        return false;
                    }
                    seq = fibers[t].seq;
                }
            }
            if (at_warp == 0) continue;
            if (at_warp != lanes) {
                err = "warp " + std::to_string(w) + ": " + std::to_string(at_warp) + " of " +
                      std::to_string(lanes) + " lanes at a shuffle/mma, the others at a barrier or exited";
                return false;
            }
            for (int t = w * 32; t < w * 32 + lanes; t++) fibers[t].st = RUN;
            any = true;
        }
        if (any) return true;
        if (live == 0) return false;
        if (at_block != live) {
            err = "deadlock";
            return false;
        }
        for (int t = 0; t < b.nthreads; t++)
            if (fibers[t].st == AT_BLOCK) fibers[t].st = RUN;
        return true;
    }
};

// ---- the worker pool: blocks of one launch spread over threads ----
struct Pool {
    std::vector<std::thread> threads;
    std::mutex m;
    std::condition_variable wake, idle;
    Job* job = nullptr;
    uint64_t generation = 0;
    int busy = 0;

    explicit Pool(int n) {
        for (int i = 0; i < n; i++) threads.emplace_back([this] { loop(); });
    }

    void loop() {
        Worker w;
        stack_t ss;
        ss.ss_sp = std::malloc(1 << 16);
        ss.ss_size = 1 << 16;
        ss.ss_flags = 0;
        sigaltstack(&ss, nullptr);  // the fault report still runs after a stack overflow
        uint64_t seen = 0;
        for (;;) {
            Job* j;
            {
                std::unique_lock<std::mutex> l(m);
                wake.wait(l, [&] { return generation != seen; });
                seen = generation;
                j = job;
            }
            work(w, *j);
            std::lock_guard<std::mutex> l(m);
            if (--busy == 0) idle.notify_all();
        }
    }

    static void work(Worker& w, Job& j) {
        const uint64_t total = (uint64_t)j.grid.x * j.grid.y * j.grid.z;
        std::string err;
        for (uint64_t i; !j.failed && (i = j.next++) < total;) {
            const dim3u bid = {(unsigned)(i % j.grid.x), (unsigned)(i / j.grid.x % j.grid.y),
                               (unsigned)(i / ((uint64_t)j.grid.x * j.grid.y))};
            if (!w.run_block(j, bid, err)) {
                std::lock_guard<std::mutex> l(j.m);
                if (!j.failed.exchange(true)) j.error = err;
                err.clear();
            }
        }
        g_block = nullptr;
        g_fiber = nullptr;
    }

    std::mutex one_launch;  // launches from several host threads run one after another

    void run(Job& j) {
        std::lock_guard<std::mutex> serial(one_launch);
        std::unique_lock<std::mutex> l(m);
        job = &j;
        busy = (int)threads.size();
        generation++;
        wake.notify_all();
        idle.wait(l, [&] { return busy == 0; });
    }
};

static Pool* pool() {
    static Pool* p = [] {
        int n = (int)std::thread::hardware_concurrency();
        if (const char* s = std::getenv("QFORGE_EMU_THREADS")) n = std::atoi(s);
        return new Pool(n < 1 ? 1 : n > 64 ? 64 : n);
    }();
    return p;
}

// ---- memory: each allocation ends at a guard page, so overruns fault at once ----
static std::mutex g_mem_lock;
static std::map<uintptr_t, std::pair<void*, size_t>> g_maps;  // ptr -> mapping
static std::map<std::string, unsigned> g_max_smem;
static struct sigaction g_old_segv;

static void on_fault(int sig, siginfo_t* si, void* uc) {
    if (g_block && g_fiber && g_job) {
        char msg[256];
        int n = std::snprintf(msg, sizeof msg,
                              "qforge CUDA emulator: invalid memory access at %p in kernel %s "
                              "(block %u,%u thread %u)\n",
                              si->si_addr, g_job->e->name, g_block->bid.x, g_block->bid.y,
                              g_fiber->tid.x);
        if (n > 0) (void)!write(2, msg, (size_t)n);
    }
    (void)uc;
    sigaction(sig, &g_old_segv, nullptr);  // re-fault into the previous handler
}

}  // namespace emu

using namespace emu;

static void set_err(char* err, int len, const std::string& s) {
    if (len > 0) std::snprintf(err, (size_t)len, "%s", s.c_str());
}

extern "C" {

int qf_emu_init(void) {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigaction(SIGSEGV, &sa, &g_old_segv);
    });
    return (int)pool()->threads.size();
}

int qf_emu_has(const char* name) { return find(name) != nullptr; }

void* qf_emu_alloc(size_t bytes) {
    const size_t body = (bytes + 255) & ~(size_t)255;
    const size_t len = ((body + PAGE - 1) & ~(PAGE - 1)) + PAGE;
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    unsigned char* guard = (unsigned char*)p + len - PAGE;
    mprotect(guard, PAGE, PROT_NONE);
    unsigned char* ptr = guard - body;
    std::lock_guard<std::mutex> l(g_mem_lock);
    g_maps[(uintptr_t)ptr] = {p, len};
    return ptr;
}

void qf_emu_free(void* ptr) {
    std::lock_guard<std::mutex> l(g_mem_lock);
    auto it = g_maps.find((uintptr_t)ptr);
    if (it == g_maps.end()) return;
    munmap(it->second.first, it->second.second);
    g_maps.erase(it);
}

int qf_emu_set_max_smem(const char* name, unsigned bytes) {
    if (!find(name) || bytes > 227 * 1024) return -1;  // Hopper's opt-in limit
    std::lock_guard<std::mutex> l(g_mem_lock);
    g_max_smem[name] = bytes;
    return 0;
}

// Launches `name` and waits for it. Returns 0, or -1 with a one-line reason in `err`.
int qf_emu_launch(const char* name, const unsigned* grid, const unsigned* block, unsigned smem,
                  const uint64_t* args, const int* kinds, int nargs, char* err, int errlen) {
    const Entry* e = find(name);
    if (!e) return set_err(err, errlen, std::string("no kernel ") + name), -1;
    if (nargs != e->nargs)
        return set_err(err, errlen, std::string(name) + ": " + std::to_string(nargs) +
                                        " arguments given, the kernel takes " +
                                        std::to_string(e->nargs)),
               -1;
    for (int i = 0; i < nargs; i++)
        if (kinds[i] != e->kinds[i])
            return set_err(err, errlen, std::string(name) + ": argument " + std::to_string(i) +
                                            " has the wrong type"),
                   -1;
    const unsigned threads = block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0 ||
        grid[1] > 65535 || grid[2] > 65535)
        return set_err(err, errlen, std::string(name) + ": invalid launch dimensions"), -1;
    unsigned limit = 48 * 1024;
    {
        std::lock_guard<std::mutex> l(g_mem_lock);
        auto it = g_max_smem.find(name);
        if (it != g_max_smem.end()) limit = it->second;
    }
    if (smem > limit)
        return set_err(err, errlen, std::string(name) + ": " + std::to_string(smem) +
                                        " bytes of dynamic shared memory exceed the limit " +
                                        std::to_string(limit)),
               -1;
    Job j;
    j.e = e;
    j.args.assign(args, args + nargs);
    j.grid = {grid[0], grid[1], grid[2]};
    j.block = {block[0], block[1], block[2]};
    j.smem = smem;
    pool()->run(j);
    if (j.failed) return set_err(err, errlen, std::string(name) + ": " + j.error), -1;
    return 0;
}

}  // extern "C"
