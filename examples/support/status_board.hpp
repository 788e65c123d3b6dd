// examples/support/status_board.hpp
//
// The main demo's live status: one line per model key (workers loading / serving / busy, queue, memory,
// requests served) and the pool's memory. On a terminal it repaints the lines in place every `period` (ANSI
// cursor movement); otherwise (a log file, CI) it prints a plain timestamped line for a key only when that
// key's line changed, so the output stays readable and short. It runs as a coroutine on the pool's executor
// and only reads snapshots, so it never blocks a pool thread for longer than a snapshot takes.
#pragma once

#include <modelpool/modelpool.hpp>

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

namespace demo {

namespace asio = modelpool::asio;

/// Renders the pool's per-key status until `stop()`. Create it with `std::make_shared` and `co_spawn`
/// `run()`.
class StatusBoard : public std::enable_shared_from_this<StatusBoard> {
public:
    /// Watches `keys` of `pool`; `tty` chooses the in-place display (default: is stdout a terminal?).
    StatusBoard(modelpool::Pool& pool, std::vector<std::string> keys, bool tty = ::isatty(STDOUT_FILENO) != 0,
                std::chrono::milliseconds period = std::chrono::milliseconds(100))
        : pool_(pool), keys_(std::move(keys)), tty_(tty), period_(period), timer_(pool.get_executor()) {}

    /// Repaints (or logs changes) every period until `stop()`.
    asio::awaitable<void> run() {
        auto self = shared_from_this(); // the coroutine keeps the board alive
        while (!stopped_) {
            if (!paused_) {
                render();
            }
            timer_.expires_after(period_);
            auto [ec] = co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
            (void)ec; // cancelled by stop(): the loop condition ends it
        }
        render(); // the final state
    }

    /// Ends `run()` after one last render. Call it on the pool's executor (the timer is not thread-safe).
    void stop() {
        stopped_ = true;
        timer_.cancel();
    }

    /// Stops repainting (the board stays where it is) until `resume()`: for phases that print themselves.
    /// Call it on the pool's executor, like `say`.
    void pause() {
        paused_ = true;
        painted_ = 0; // what follows is printed below the board
    }

    /// Repaints again (below whatever was printed meanwhile).
    void resume() {
        paused_ = false;
        render();
    }

    /// Text printed between repaints (e.g. a phase title): on a terminal it is printed above the board.
    void say(const std::string& line) {
        if (tty_ && painted_ > 0) {
            std::printf("\x1b[%zuA\x1b[J", painted_); // erase the board; it is repainted below the line
            painted_ = 0;
        }
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
        if (!paused_) {
            render();
        }
    }

private:
    std::string line_for(const std::string& key) const {
        auto s = pool_.snapshot(key);
        if (!s) {
            return fmt::format("{:<14} (not registered)", key);
        }
        std::string health = s->failing_fast        ? "  FAILING: " + s->last_load_error
                             : s->load_failures > 0 ? fmt::format("  {} failed loads", s->load_failures)
                                                    : std::string();
        // The mean batch size of a key with batching: requests per model call.
        const std::string batches =
            s->batch_size.count == 0 ? std::string() : fmt::format("  batch {:.1f}", s->batch_size.mean());
        return fmt::format(
            "{:<14} {:<15} loading {}  serving {} (busy {})  queue {:>3}  {:>4} MB  served {:>6}{}{}", key,
            s->capability, s->starting(), s->serving(), s->count(modelpool::WorkerState::busy),
            s->queue_depth, s->memory_mb, s->served, batches, health);
    }

    void render() {
        std::vector<std::string> lines;
        for (const auto& key : keys_) {
            lines.push_back(line_for(key));
        }
        const auto memory = pool_.governor().stats();
        lines.push_back(fmt::format("{:<14} {} of {} MB allocated (peak {} MB)", "memory",
                                    memory.allocated_mb, memory.limit_mb, memory.peak_mb));
        if (tty_) {
            if (painted_ > 0) {
                std::printf("\x1b[%zuA", painted_); // back to the board's first line
            }
            for (const auto& line : lines) {
                std::printf("\x1b[2K%s\n", line.c_str());
            }
            painted_ = lines.size();
            std::fflush(stdout);
            return;
        }
        // Not a terminal: log a line only when it changed (the served counter alone does not count as a
        // change, or a busy model would log every period).
        for (std::size_t i = 0; i < lines.size(); ++i) {
            const auto name = i < keys_.size() ? keys_[i] : std::string("memory");
            auto shown = lines[i];
            auto served_at = shown.find("served");
            const auto fingerprint = shown.substr(0, served_at);
            if (last_[name] != fingerprint) {
                last_[name] = fingerprint;
                std::printf("[status] %s\n", shown.c_str());
            }
        }
        std::fflush(stdout);
    }

    modelpool::Pool& pool_;
    std::vector<std::string> keys_;
    bool tty_;
    std::chrono::milliseconds period_;
    asio::steady_timer timer_;
    bool stopped_ = false;
    bool paused_ = false;
    std::size_t painted_ = 0;                 // board lines on screen (terminal mode)
    std::map<std::string, std::string> last_; // last logged line per key (plain mode)
};

} // namespace demo
