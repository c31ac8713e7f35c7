package android.widget;
public abstract class AdapterView<T> extends android.view.View {
  public interface OnItemSelectedListener { void onItemSelected(AdapterView<?> parent, android.view.View view, int position, long id); void onNothingSelected(AdapterView<?> parent); }
  public void setOnItemSelectedListener(OnItemSelectedListener l) {}
  public final OnItemSelectedListener getOnItemSelectedListener() { return null; }
  public void setSelection(int p) {}
  public abstract T getAdapter();
  public abstract void setAdapter(T a);
}
