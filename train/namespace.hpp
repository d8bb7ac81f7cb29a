#pragma once
// The namespace of the training utilities is xg::training. It was xg::train, which made
// `using namespace xg;` followed by a user function named train() ambiguous at every call;
// the old spelling is therefore opt-in, for one release, by defining
// XGRAD_TRAIN_NAMESPACE_ALIAS before the first xgrad include (with it, such a program
// clashes again).
namespace xg::training {}

#ifdef XGRAD_TRAIN_NAMESPACE_ALIAS
namespace xg {
namespace train = training;
}  // namespace xg
#endif
