// One CLI command: its subcommand (with its options, registered next to the
// handler in the command's own file) and what runs when it was given.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace connredir::cli {

struct Command {
  CLI::App* sub = nullptr;
  std::function<int()> run;
};

}  // namespace connredir::cli
