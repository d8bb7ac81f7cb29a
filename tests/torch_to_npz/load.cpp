// The C++ half of check.py: the same model as its CharModel, with the same names, loaded from
// the .npz that tools/torch_to_npz.py wrote and run on the same ids.
#include <xgrad/xgrad.hpp>

#include <string>

using namespace xg;

struct CharModel : nn::Module {
  std::shared_ptr<nn::Embedding> embed;
  std::shared_ptr<nn::LSTM> lstm;
  std::shared_ptr<nn::Sequential> head;
  std::shared_ptr<nn::MultiheadAttention> attn;
  CharModel(std::int64_t vocab = 20, std::int64_t emb = 8, std::int64_t hidden = 16) {
    embed = register_module("embed", std::make_shared<nn::Embedding>(vocab, emb));
    lstm = register_module("lstm", std::make_shared<nn::LSTM>(nn::LSTMOptions{
        .input_size = emb, .hidden_size = hidden, .num_layers = 2, .batch_first = true}));
    head = register_module("head", std::make_shared<nn::Sequential>(
        std::make_shared<nn::Linear>(hidden, hidden), std::make_shared<nn::Tanh>(),
        std::make_shared<nn::Linear>(hidden, vocab)));
    attn = register_module("attn", std::make_shared<nn::MultiheadAttention>(nn::MultiheadAttentionOptions{
        .embed_dim = hidden, .num_heads = 2, .batch_first = true}));
  }
  Tensor forward(const Tensor& ids) const {
    Tensor out = (*lstm)((*embed)(ids)).output;
    nn::MultiheadAttentionForwardOptions o;
    o.need_weights = false;
    Tensor ctx = (*attn)(out, out, out, o).context;
    return (*head)(out + ctx);
  }
};

int main(int argc, char** argv) {
  if (argc != 2) {
    fmt::print(stderr, "usage: load <dir with model.npz, ids.npy, expected.npy>\n");
    return 2;
  }
  const std::string dir = argv[1];
  CharModel model;
  model.load(dir + "/model.npz");  // strict: every name, shape and dtype
  model.eval();
  NoGradGuard no_grad;
  const Tensor y = model.forward(load_npy(dir + "/ids.npy"));
  const Tensor expected = load_npy(dir + "/expected.npy");
  const double err = max(abs(sub(y, expected))).item();
  fmt::print("torch_to_npz: {} tensors loaded; max abs difference from PyTorch {:.3g}\n",
             model.state_dict().size(), err);
  return err < 1e-5 ? 0 : 1;
}
